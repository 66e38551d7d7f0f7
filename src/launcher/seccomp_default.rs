//! Docker's default seccomp profile as data: [`default_profile`].
//!
//! The allow-list follows moby's `profiles/seccomp/default.json` (default action
//! `ERRNO(EPERM)`): the calls every container may make, then the ones allowed only with a
//! capability, an architecture or a kernel version, and the argument-checked ones
//! (`socket` without `AF_VSOCK`, `personality` with its harmless values, `clone` without
//! namespace flags unless CAP_SYS_ADMIN, `clone3` answering ENOSYS so libcs fall back to
//! `clone`). Blocked among others: `keyctl`, `add_key`, `request_key` (the kernel keyring is
//! not namespaced), `mount`, `unshare`, `setns`, `bpf`, `kexec_*`, `reboot`, `*_module`.

use super::{ArchMap, Filter, Profile, Rule};
use oci_spec::runtime::{
    Arch, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompOperator,
};

/// Allowed for every container.
const ALLOWED: &str = "\
    accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown chown32 \
    clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime \
    clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect \
    copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old \
    epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit \
    exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir \
    fchmod fchmodat fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock \
    fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate \
    ftruncate64 futex futex_time64 futex_waitv futimesat getcpu getcwd getdents getdents64 \
    getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer \
    getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid getresgid32 \
    getresuid getresuid32 getrlimit get_robust_list getrusage getsid getsockname getsockopt \
    get_thread_area gettid gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init \
    inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents \
    io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit io_uring_enter \
    io_uring_register io_uring_setup ipc kill landlock_add_rule landlock_create_ruleset \
    landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listxattr llistxattr \
    _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise membarrier memfd_create \
    memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect \
    mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend \
    mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall \
    munmap name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause \
    pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll \
    ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6 \
    pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recv \
    recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr rename renameat \
    renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask \
    rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 \
    rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam sched_get_priority_max \
    sched_get_priority_min sched_getscheduler sched_rr_get_interval \
    sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam \
    sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop \
    semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 \
    setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority \
    setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 \
    setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32 \
    setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask \
    sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statx symlink symlinkat \
    sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete \
    timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create \
    timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate \
    truncate64 ugetrlimit umask uname unlink unlinkat utime utimensat utimensat_time64 utimes \
    vfork vmsplice wait4 waitid waitpid write writev";

/// Allowed when the container holds the capability.
const BY_CAP: &[(&str, &str)] = &[
    ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
    (
        "CAP_SYS_ADMIN",
        "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount \
         mount_setattr move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname \
         sethostname setns syslog umount umount2 unshare",
    ),
    ("CAP_SYS_BOOT", "reboot"),
    ("CAP_SYS_CHROOT", "chroot"),
    ("CAP_SYS_MODULE", "delete_module init_module finit_module"),
    ("CAP_SYS_PACCT", "acct"),
    (
        "CAP_SYS_PTRACE",
        "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace",
    ),
    ("CAP_SYS_RAWIO", "iopl ioperm"),
    (
        "CAP_SYS_TIME",
        "settimeofday stime clock_settime clock_settime64",
    ),
    ("CAP_SYS_TTY_CONFIG", "vhangup"),
    (
        "CAP_SYS_NICE",
        "get_mempolicy mbind set_mempolicy set_mempolicy_home_node",
    ),
    ("CAP_SYSLOG", "syslog"),
    ("CAP_BPF", "bpf"),
    ("CAP_PERFMON", "perf_event_open"),
];

/// Allowed on these architectures (Go names).
const BY_ARCH: &[(&[&str], &str)] = &[
    (&["ppc64le"], "sync_file_range2 swapcontext"),
    (
        &["arm", "arm64"],
        "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls",
    ),
    (&["amd64", "x32"], "arch_prctl"),
    (&["amd64", "x32", "x86"], "modify_ldt"),
    (
        &["s390", "s390x"],
        "s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr",
    ),
    (&["riscv64"], "riscv_flush_icache"),
];

/// `personality` values allowed: PER_LINUX, UNAME26, PER_LINUX32, PER_LINUX32|UNAME26, and
/// the query 0xffffffff.
const PERSONALITIES: &[u64] = &[0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

/// CLONE_NEWNS | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWCGROUP.
const CLONE_NAMESPACES: u64 = 0x7E02_0000;

const AF_VSOCK: u64 = 40;

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn allow(names: &str) -> Rule {
    Rule {
        names: words(names),
        action: LinuxSeccompAction::ScmpActAllow,
        ..Default::default()
    }
}

fn arg(
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: LinuxSeccompOperator,
) -> LinuxSeccompArg {
    let b = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op);
    let b = match value_two {
        Some(v) => b.value_two(v),
        None => b,
    };
    // Every field has a default: building cannot fail.
    b.build().unwrap_or_default()
}

fn caps(c: &[&str]) -> Filter {
    Filter {
        caps: c.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn arches(a: &[&str]) -> Filter {
    Filter {
        arches: a.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Docker's default profile.
pub fn default_profile() -> Profile {
    use LinuxSeccompOperator::{ScmpCmpEq, ScmpCmpMaskedEq, ScmpCmpNe};
    let mut syscalls = vec![allow(ALLOWED)];
    syscalls.push(Rule {
        includes: Filter {
            min_kernel: Some("4.8".into()),
            ..Default::default()
        },
        ..allow("process_vm_readv process_vm_writev ptrace")
    });
    syscalls.push(Rule {
        args: vec![arg(0, AF_VSOCK, None, ScmpCmpNe)],
        ..allow("socket")
    });
    for p in PERSONALITIES {
        syscalls.push(Rule {
            args: vec![arg(0, *p, None, ScmpCmpEq)],
            ..allow("personality")
        });
    }
    for (a, names) in BY_ARCH {
        syscalls.push(Rule {
            includes: arches(a),
            ..allow(names)
        });
    }
    for (cap, names) in BY_CAP {
        syscalls.push(Rule {
            includes: caps(&[cap]),
            ..allow(names)
        });
    }
    // Without CAP_SYS_ADMIN, clone may not make namespaces (flags are argument 0, but
    // argument 1 on s390).
    syscalls.push(Rule {
        args: vec![arg(0, CLONE_NAMESPACES, Some(0), ScmpCmpMaskedEq)],
        excludes: Filter {
            caps: vec!["CAP_SYS_ADMIN".into()],
            arches: vec!["s390".into(), "s390x".into()],
            min_kernel: None,
        },
        ..allow("clone")
    });
    syscalls.push(Rule {
        args: vec![arg(1, CLONE_NAMESPACES, Some(0), ScmpCmpMaskedEq)],
        includes: arches(&["s390", "s390x"]),
        excludes: caps(&["CAP_SYS_ADMIN"]),
        ..allow("clone")
    });
    syscalls.push(Rule {
        names: words("clone3"),
        action: LinuxSeccompAction::ScmpActErrno,
        errno_ret: Some(libc::ENOSYS as u32),
        excludes: caps(&["CAP_SYS_ADMIN"]),
        ..Default::default()
    });
    let map = |a: Arch, subs: &[Arch]| ArchMap {
        architecture: a,
        sub_architectures: subs.to_vec(),
    };
    Profile {
        default_action: LinuxSeccompAction::ScmpActErrno,
        default_errno_ret: Some(libc::EPERM as u32),
        architectures: Vec::new(),
        arch_map: vec![
            map(
                Arch::ScmpArchX86_64,
                &[Arch::ScmpArchX86, Arch::ScmpArchX32],
            ),
            map(Arch::ScmpArchAarch64, &[Arch::ScmpArchArm]),
            map(
                Arch::ScmpArchMips64,
                &[Arch::ScmpArchMips, Arch::ScmpArchMips64n32],
            ),
            map(
                Arch::ScmpArchMipsel64,
                &[Arch::ScmpArchMipsel, Arch::ScmpArchMipsel64n32],
            ),
            map(Arch::ScmpArchS390x, &[Arch::ScmpArchS390]),
            map(Arch::ScmpArchRiscv64, &[]),
        ],
        flags: Vec::new(),
        syscalls,
    }
}
