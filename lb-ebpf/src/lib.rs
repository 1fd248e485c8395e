// Empty on purpose: the XDP program is the `weir-xdp` binary. This library target only
// lets lb-userspace declare a build-dependency on this crate, so cargo rebuilds the
// agent when the program changes.
#![no_std]
