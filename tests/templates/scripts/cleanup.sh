#!/bin/sh -eux
apt-get -y clean
