//! The filelister plugin process: everything is in the library.

fn main() -> std::process::ExitCode {
    tether_filelister::plugin().run()
}
