//! `channels.families`: socket families a policy may open, by name.

use std::{fmt, str::FromStr};

use super::fields::deserialize_from_str;

/// A socket family a policy may open beyond AF_UNIX, AF_INET and AF_INET6
/// (which are always open): by its name without `AF_`, lower case
/// (`vsock`, `packet`). `netlink` opens every netlink protocol; without it
/// only `NETLINK_ROUTE` is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    name: &'static str,
    number: u16,
}

/// Families by name, with their numbers (include/linux/socket.h).
const FAMILIES: &[(&str, u16)] = &[
    ("ax25", 3),
    ("ipx", 4),
    ("appletalk", 5),
    ("netrom", 6),
    ("bridge", 7),
    ("atmpvc", 8),
    ("x25", 9),
    ("rose", 11),
    ("netbeui", 13),
    ("security", 14),
    ("key", 15),
    ("netlink", 16),
    ("packet", 17),
    ("ash", 18),
    ("econet", 19),
    ("atmsvc", 20),
    ("rds", 21),
    ("sna", 22),
    ("irda", 23),
    ("pppox", 24),
    ("wanpipe", 25),
    ("llc", 26),
    ("ib", 27),
    ("mpls", 28),
    ("can", 29),
    ("tipc", 30),
    ("bluetooth", 31),
    ("iucv", 32),
    ("rxrpc", 33),
    ("isdn", 34),
    ("phonet", 35),
    ("ieee802154", 36),
    ("caif", 37),
    ("alg", 38),
    ("nfc", 39),
    ("vsock", 40),
    ("kcm", 41),
    ("qipcrtr", 42),
    ("smc", 43),
    ("xdp", 44),
    ("mctp", 45),
];

impl Family {
    pub fn number(&self) -> u16 {
        self.number
    }
}

/// The name of socket family `number` (`vsock`), or `other`.
pub fn family_name(number: u8) -> &'static str {
    FAMILIES
        .iter()
        .find(|(_, n)| *n == u16::from(number))
        .map_or("other", |(name, _)| name)
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let key = s.trim().to_ascii_lowercase();
        let key = key.strip_prefix("af_").unwrap_or(&key);
        if matches!(key, "unix" | "local" | "inet" | "inet6") {
            return Err(format!(
                "`{s}` is always open (egressd judges IP sockets by destination, and UNIX sockets by `channels.unix`): list only other families"
            ));
        }
        FAMILIES
            .iter()
            .find(|(n, _)| *n == key)
            .map(|&(name, number)| Family { name, number })
            .ok_or_else(|| {
                format!(
                    "`{s}` is not a socket family egressd knows: write one of {}",
                    FAMILIES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

deserialize_from_str!(Family);
