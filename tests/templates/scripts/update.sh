#!/bin/sh -eux
apt-get update
