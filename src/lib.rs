//! strata: run containers from OCI/Docker images without pulling them first.
//!
//! Library crate behind the `strata` binary; tests and benches call it directly.
//! Layering (each module may call only those listed before it):
//! `digest`, `cosign`, `reference`, `oci`, `config`, `report` -> `registry` -> `store` -> `layer` ->
//! `cache` -> `union` -> `image` -> `fuse` -> `mount` -> `snapshotter` -> `als` -> `daemon` ->
//! `launcher` -> `cli`.
//! `oci` holds the image documents (manifests, indexes, configs, descriptors) that `registry`,
//! `store` and those above share; `report` formats an error with its causes; `cosign` checks and makes cosign-compatible
//! signatures (keys of `index-trust: signed`). `image` (pull,
//! push, save/load, commit, index and profile artifacts) joins the registry and the store;
//! `mount` is the one place a mount is assembled from (client, store, cache, config), for the
//! CLI, tests and the daemon; `snapshotter` is containerd's remote snapshotter (served by the
//! daemon); `als` is podman's additional layer store (served by the daemon too); `daemon` serves every mount of a root from one process.

pub mod als;
pub mod cache;
pub mod cli;
pub mod config;
pub mod cosign;
pub mod daemon;
pub mod digest;
pub mod fuse;
pub mod image;
pub mod launcher;
pub mod layer;
pub mod mount;
pub mod oci;
pub mod reference;
pub mod registry;
pub mod report;
pub mod snapshotter;
pub mod store;
#[cfg(test)]
mod testdata;
#[cfg(test)]
mod testdata_tests;
pub mod union;
