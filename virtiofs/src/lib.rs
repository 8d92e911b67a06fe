//! `hull-fs`: a vhost-user-fs backend confined to one shared directory.
//!
//! Not built yet: see the virtiofs issue.
