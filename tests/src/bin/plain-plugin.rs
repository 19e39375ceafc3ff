//! A plugin with no host-service code and no services of its own: only what the SDK serves
//! for every plugin. The host's `establish_host_services` must report "not requested".

use std::process::ExitCode;

use tether_plugin_sdk::{HandshakeConfig, Plugin, Routes};

fn main() -> ExitCode {
    Plugin::new(HandshakeConfig::new("TETHER_TEST_PLUGIN", "e2e"))
        .version(1, Routes::default())
        .run()
}
