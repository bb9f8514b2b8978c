#!/bin/sh
# private_dev.sh COMMAND...: run COMMAND in the current mount namespace (start it under
# `unshare --mount --propagation private`) with a /dev of its own: a tmpfs holding only null,
# zero, full, random, urandom, tty, fd, and the host's /dev/shm and /dev/pts bound in.
# Rockchip's librknnrt, run as root without an NPU, creates /dev/dri and mknods /dev/dri/card*
# (and qemu-user does not redirect mkdir or mknod into its sysroot): here they land in this
# tmpfs, which goes away with the namespace, and the host's /dev stays untouched.
# This is a host (x86) shell script: an emulated process runs it natively.
set -eu
old=$(mktemp -d /tmp/rknn-farm-board-dev.XXXXXX)
mount --rbind /dev "$old"
mount -t tmpfs -o mode=755 rknn-farm-board-dev /dev
for node in null zero full random urandom tty; do
    touch "/dev/$node"
    mount --bind "$old/$node" "/dev/$node"
done
mkdir /dev/shm /dev/pts
mount --rbind "$old/shm" /dev/shm
mount --rbind "$old/pts" /dev/pts
ln -s /proc/self/fd /dev/fd
umount -l "$old"
rmdir "$old"
exec "$@"
