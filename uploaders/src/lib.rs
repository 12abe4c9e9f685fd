//! Bundles and the backends that carry them off the machine.
