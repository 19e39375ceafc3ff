//! Tiny misbehaving plugins, one per handshake failure, selected by the first argument.
//! They ignore the magic cookie and print raw lines, as a broken or hostile plugin would.

#![allow(
    clippy::disallowed_types,
    reason = "a misbehaving test plugin: it binds and dials sockets itself"
)]

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::Duration;

use tether_transport::{Listener, Peer, tls};

fn socket_dir() -> PathBuf {
    std::env::var_os("PLUGIN_UNIX_SOCKET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

fn say(line: &str) {
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(line.as_bytes());
    let _ = stdout.flush();
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Announces one certificate and serves TLS with another.
fn wrong_cert(dir: &std::path::Path) -> ! {
    use futures_util::StreamExt;
    let host_pem = std::env::var("PLUGIN_CLIENT_CERT").expect("the host asks for AutoMTLS");
    let host = tls::certificate_from_pem(&host_pem).expect("the host's certificate");
    let announced = tls::Identity::generate().expect("certificate");
    let served = tls::Identity::generate().expect("certificate");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut listener = Listener::bind(dir, "wrong-", Peer::SameUser, "host".into())
            .expect("bind")
            .tls(tls::MutualTls::new(&served, host).expect("tls"));
        say(&format!(
            "1|1|unix|{}|grpc|{}\n",
            listener.path().display(),
            announced.handshake_field()
        ));
        while let Some(conn) = listener.next().await {
            drop(conn);
        }
    });
    sleep_forever();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = socket_dir();
    let sock = dir.join("bad.sock");
    let sock = sock.display();
    match args.first().map(String::as_str).unwrap_or("") {
        "garbage" => say(&format!(
            "hello from a chatty plugin\n1|1|unix|{sock}|grpc|\n"
        )),
        "overlong" => say(&"x".repeat(1024 * 1024)),
        "core-version" => say(&format!("2|1|unix|{sock}|grpc|\n")),
        "netrpc" => say(&format!("1|1|unix|{sock}|netrpc|\n")),
        "outside" => say("1|1|unix|/tmp/elsewhere/plugin.sock|grpc|\n"),
        "tcp" => say("1|1|tcp|127.0.0.1:1234|grpc|\n"),
        "silent" => {}
        "exit-early" => {
            eprintln!("[ERROR] cannot read my configuration");
            std::process::exit(3);
        }
        "foreign-socket" => {
            // Another process (our child) owns the socket we announce.
            let exe = std::env::current_exe().expect("current exe");
            let path = dir.join("foreign.sock");
            #[allow(
                clippy::disallowed_methods,
                clippy::zombie_processes,
                reason = "the host kills it with the process group; this bad plugin starts a second process to own the socket it announces"
            )]
            let _child = std::process::Command::new(exe)
                .arg("listen")
                .arg(&path)
                .spawn()
                .expect("spawn the listener");
            // Announce it once it accepts connections: bind and listen are two steps, and a
            // connection between them is refused.
            while std::os::unix::net::UnixStream::connect(&path).is_err() {
                std::thread::sleep(Duration::from_millis(5));
            }
            say(&format!("1|1|unix|{}|grpc|\n", path.display()));
        }
        "no-cert" => {
            // A plugin that ignores `PLUGIN_CLIENT_CERT`: it serves without TLS.
            let _listener = UnixListener::bind(dir.join("bad.sock")).expect("bind");
            say(&format!("1|1|unix|{sock}|grpc|\n"));
            sleep_forever();
        }
        "unasked-cert" => {
            let _listener = UnixListener::bind(dir.join("bad.sock")).expect("bind");
            let identity = tls::Identity::generate().expect("certificate");
            say(&format!(
                "1|1|unix|{sock}|grpc|{}\n",
                identity.handshake_field()
            ));
            sleep_forever();
        }
        "wrong-cert" => wrong_cert(&dir),
        "listen" => {
            let listener = UnixListener::bind(&args[1]).expect("bind");
            for stream in listener.incoming() {
                drop(stream);
            }
        }
        other => {
            eprintln!("bad-plugin: unknown mode {other:?}");
            std::process::exit(2);
        }
    }
    sleep_forever();
}
