//! Telling systemd (Type=notify) that egressd is ready, reloading or
//! stopping, and pinging its watchdog.

use std::time::Duration;

/// Tells systemd (Type=notify) something, if it is listening.
pub fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return tracing::warn!("NOTIFY_SOCKET: {e}"),
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::warn!("telling systemd {state}: {e}");
    }
}

/// How often to tell systemd's watchdog that egressd is alive: half of
/// WatchdogSec= (WATCHDOG_USEC, when WATCHDOG_PID is this process), or
/// never.
pub fn watchdog_interval() -> Option<tokio::time::Interval> {
    let ours = std::env::var("WATCHDOG_PID")
        .map_or(true, |p| p.parse::<u32>().ok() == Some(std::process::id()));
    let usec = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|u| u.parse::<u64>().ok())
        .filter(|u| *u > 0 && ours)?;
    tracing::info!(seconds = usec as f64 / 1e6, "systemd watchdog");
    let period = Duration::from_micros(usec / 2);
    let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Some(i)
}

/// The watchdog's next tick; never, without a watchdog.
pub async fn watchdog_tick(watchdog: &mut Option<tokio::time::Interval>) {
    match watchdog {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
