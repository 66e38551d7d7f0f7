//! FUSE adapter: the only module that names fuser types.
