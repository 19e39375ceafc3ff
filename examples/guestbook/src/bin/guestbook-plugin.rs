//! The guestbook plugin's process: serves `guestbook.v1.Greeter`, with host services.

use tether::plugin::{Plugin, Routes};
use tether_example_guestbook::proto::greeter_server::GreeterServer;
use tether_example_guestbook::{Greeter, HANDSHAKE, VERSION};

fn main() -> std::process::ExitCode {
    let (plugin, host) = Plugin::new(HANDSHAKE).with_host_services();
    plugin
        .version(VERSION, Routes::new(GreeterServer::new(Greeter::new(host))))
        .run()
}
