#!/usr/bin/env bash
# A Debian base image for the image test, made from Debian packages (this machine cannot
# pull images): a debootstrap minbase with python3 and python3-venv, without the package
# caches, documentation and locales, committed with buildah as $1.
set -euo pipefail
name="$1"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv bookworm "$root" \
    http://deb.debian.org/debian >/dev/null
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/locale/* "$root"/usr/share/man/* \
    "$root"/usr/share/info/* "$root"/usr/share/zoneinfo "$root"/var/cache/debconf/*-old
container="$(buildah from scratch)"
mount="$(buildah mount "$container")"
cp -a "$root"/. "$mount"/
buildah umount "$container" >/dev/null
buildah commit --quiet "$container" "$name" >/dev/null
buildah rm "$container" >/dev/null
