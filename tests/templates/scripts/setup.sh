#!/bin/sh -eux
echo setup
