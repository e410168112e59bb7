//! Handing the command's seccomp listener to egressd: one descriptor over
//! a UNIX socket pair (SCM_RIGHTS). The sending side runs in the child
//! between fork and exec, so it allocates nothing.

use std::{
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::net::UnixDatagram,
    },
};

/// Room for one descriptor's control message, aligned as a cmsghdr.
#[repr(C, align(8))]
struct Control([u8; 32]);

/// A message of one byte (`iov`) with `control` as its control buffer.
///
/// # Safety
/// The message points at `iov` and `control`: it must not outlive them.
unsafe fn message(iov: &mut libc::iovec, control: &mut Control, len: usize) -> libc::msghdr {
    // SAFETY: a zeroed msghdr is valid; the caller keeps what it points at.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = len as _;
    msg
}

/// Sends `fd` over the UNIX socket `sock`. Async-signal-safe.
pub fn send_fd(sock: libc::c_int, fd: libc::c_int) -> io::Result<()> {
    let mut control = Control([0; 32]);
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: the message points at locals that outlive the sendmsg call,
    // and the control buffer is large and aligned enough for one
    // descriptor's cmsghdr.
    unsafe {
        let msg = message(&mut iov, &mut control, libc::CMSG_SPACE(4) as usize);
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
        std::ptr::copy_nonoverlapping(
            (&fd as *const libc::c_int).cast::<u8>(),
            libc::CMSG_DATA(cmsg),
            4,
        );
        if libc::sendmsg(sock, &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One descriptor sent over `sock`, if one is waiting (WouldBlock if not).
pub fn receive_fd(sock: &UnixDatagram) -> io::Result<OwnedFd> {
    let mut control = Control([0; 32]);
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: the message points at locals that outlive the call; the
    // kernel writes at most msg_controllen bytes of control.
    unsafe {
        let mut msg = message(&mut iov, &mut control, std::mem::size_of::<Control>());
        let n = libc::recvmsg(
            sock.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        );
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        let mut fd: libc::c_int = -1;
        std::ptr::copy_nonoverlapping(
            libc::CMSG_DATA(cmsg),
            (&mut fd as *mut libc::c_int).cast::<u8>(),
            4,
        );
        Ok(OwnedFd::from_raw_fd(fd))
    }
}
