//! Container launcher: OCI bundle generation, runc, container records.
