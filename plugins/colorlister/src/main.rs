//! The colorlister plugin process: everything is in the library.

fn main() -> std::process::ExitCode {
    tether_colorlister::plugin().run()
}
