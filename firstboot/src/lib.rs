//! The on-board agent of imagegen nodes. Its library owns the node config schema
//! (`/etc/imagegen/node.toml`), which the builder writes with these same types.
