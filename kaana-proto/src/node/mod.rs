//! What ties the layers together: the server and its handlers ([`server`]), push
//! ([`backup`]), restore, verify and the history ([`restore`]), challenges and audits
//! ([`audit`]), the holder's answers ([`answer`]), what the tools share on the command line
//! ([`cli`]), finding peers and being found on the DHT, with the router's port mapping
//! ([`discover`]), and what a run takes from the machine: the clock, the environment, the OS's
//! randomness ([`machine`]).

pub mod answer;
pub mod audit;
pub mod backup;
pub mod cli;
pub mod discover;
pub mod machine;
pub mod refusal;
pub mod report;
pub mod restore;
pub mod server;
