pub mod hardening;
pub mod users;
