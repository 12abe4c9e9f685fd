//! The QEMU guest harness used by ferry's end-to-end tests.
