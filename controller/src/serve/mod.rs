//! What the controller serves: the routing table gateways pull ([`table_hub`]), the HTTP
//! API over canaries ([`api`]) and the controller's own Prometheus metrics ([`observe`]).

pub mod api;
pub mod observe;
pub mod table_hub;
