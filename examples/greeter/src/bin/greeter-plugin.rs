//! The greeter plugin: serves `greeter.v1.Greeter`, reading its greeting through the host.
//! A host starts it; run by hand, it explains that and exits.

use tether::plugin::{Plugin, Routes};
use tether_example_greeter::proto::greeter_server::GreeterServer;
use tether_example_greeter::{Greeter, HANDSHAKE, VERSION};

fn main() -> std::process::ExitCode {
    // Opting in to host services: `host` is how the greeter reaches the file service.
    let (plugin, host) = Plugin::new(HANDSHAKE).with_host_services();
    plugin
        .version(VERSION, Routes::new(GreeterServer::new(Greeter::new(host))))
        .run()
}
