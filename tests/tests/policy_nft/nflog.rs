//! What an nflog group received, read the way an operator's collector would: `tcpdump`
//! captures the group inside the node namespace into a pcap file, and the NFLOG records
//! are decoded here (prefix, addresses, destination port).

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use twill_tests::Netns;

/// One logged packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub prefix: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dport: u16,
}

/// A running capture of one nflog group; stopped (and its file removed) on drop.
pub struct NflogCapture {
    child: Child,
    file: PathBuf,
    /// tcpdump's stderr past "listening": kept open so its closing words do not kill it.
    _stderr: std::io::Lines<BufReader<std::process::ChildStderr>>,
}

impl NflogCapture {
    /// Starts `tcpdump` on `nflog:<group>` in `ns` and returns once it listens.
    pub fn start(ns: &Netns, group: u16) -> NflogCapture {
        let file = std::env::temp_dir().join(format!("{}-nflog{group}.pcap", ns.name()));
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "tcpdump", "-U", "-n", "-i"])
            .arg(format!("nflog:{group}"))
            .arg("-w")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tcpdump (Debian package tcpdump)");
        let stderr = child.stderr.take().expect("tcpdump stderr");
        let mut lines = BufReader::new(stderr).lines();
        // tcpdump says "listening on nflog:N" once the group is bound.
        let mut said = Vec::new();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on") => break,
                Some(Ok(line)) => said.push(line),
                _ => panic!("tcpdump did not start: {}", said.join("\n")),
            }
        }
        NflogCapture {
            child,
            file,
            _stderr: lines,
        }
    }

    /// Waits until the capture holds records and has stopped growing (the kernel hands
    /// nflog messages over in batches, flushed up to a second later), then stops it and
    /// decodes what it wrote.
    pub fn stop(mut self) -> Vec<Logged> {
        const HEADER: u64 = 24;
        let deadline = Instant::now() + Duration::from_secs(5);
        let size = |file: &PathBuf| std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        let (mut last, mut since) = (size(&self.file), Instant::now());
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let now = size(&self.file);
            if now != last {
                (last, since) = (now, Instant::now());
            } else if now > HEADER && since.elapsed() > Duration::from_millis(1200) {
                break;
            }
        }
        // SIGINT: tcpdump flushes and closes the file.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let _ = self.child.wait();
        let bytes = std::fs::read(&self.file).expect("read the capture");
        decode_pcap(&bytes)
    }
}

impl Drop for NflogCapture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The records of a pcap file of link type NFLOG (239).
fn decode_pcap(bytes: &[u8]) -> Vec<Logged> {
    assert!(bytes.len() >= 24, "no pcap header");
    assert_eq!(
        u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]),
        239,
        "not an NFLOG capture"
    );
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let len = u32_le(&bytes[at + 8..at + 12]) as usize;
        let record = &bytes[at + 16..(at + 16 + len).min(bytes.len())];
        out.extend(decode_nflog(record));
        at += 16 + len;
    }
    out
}

fn u32_le(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// One NFLOG record: a 4-byte header, then TLVs (length and type in host order, values
/// padded to 4 bytes). Type 9 is the packet from its network header, 10 the prefix.
fn decode_nflog(record: &[u8]) -> Option<Logged> {
    let (mut prefix, mut packet) = (None, None);
    let mut at = 4;
    while at + 4 <= record.len() {
        let len = u16::from_le_bytes([record[at], record[at + 1]]) as usize;
        let kind = u16::from_le_bytes([record[at + 2], record[at + 3]]);
        if len < 4 || at + len > record.len() {
            break;
        }
        let value = &record[at + 4..at + len];
        match kind {
            9 => packet = Some(value),
            10 => {
                let text = value.split(|b| *b == 0).next().unwrap_or_default();
                prefix = Some(String::from_utf8_lossy(text).into_owned());
            }
            _ => {}
        }
        at += (len + 3) & !3;
    }
    let (src, dst, dport) = addresses(packet?)?;
    Some(Logged {
        prefix: prefix?,
        src,
        dst,
        dport,
    })
}

/// Source, destination and destination port of an IPv4 or IPv6 TCP/UDP packet.
fn addresses(p: &[u8]) -> Option<(IpAddr, IpAddr, u16)> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let src: [u8; 4] = p[12..16].try_into().ok()?;
            let dst: [u8; 4] = p[16..20].try_into().ok()?;
            let dport = u16::from_be_bytes([*p.get(ihl + 2)?, *p.get(ihl + 3)?]);
            Some((src.into(), dst.into(), dport))
        }
        6 if p.len() >= 44 => {
            let src: [u8; 16] = p[8..24].try_into().ok()?;
            let dst: [u8; 16] = p[24..40].try_into().ok()?;
            Some((src.into(), dst.into(), u16::from_be_bytes([p[42], p[43]])))
        }
        _ => None,
    }
}
