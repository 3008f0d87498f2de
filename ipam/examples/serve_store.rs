//! Serves one store directory on a socket, as twill-agent does, for profiling the
//! plugin by hand: `cargo run --release -p twill-ipam --example serve_store -- DIR SOCKET`.

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), Some(socket)) = (args.next(), args.next()) else {
        eprintln!("usage: serve_store DIR SOCKET");
        std::process::exit(2);
    };
    match twill_ipam::StoreService::start(dir.as_ref(), socket.as_ref()) {
        Ok(service) => eprintln!("serve_store: {}", service.serve()),
        Err(e) => eprintln!("serve_store: {e}"),
    }
    std::process::exit(1);
}
