//! The eBPF datapath: loading the embedded programs, attaching them to the attach-point cgroup,
//! and typed access to their maps.

mod addr;
mod heartbeat;
mod maps;
mod object;
mod policy;
mod splice;

use std::{
    fs::File,
    path::Path,
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, SockHash, lpm_trie::Key},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, CgroupSockopt,
        ProgramError, SkMsg, SkSkb, SockOps,
    },
};
use proxy_common::{
    CFG_FAIL_CLOSED, CFG_SOCKMAP, CFG_SPLICE, ProxyConfig, SockPair, maps as names,
    policy_maps as policy_names,
};

pub use addr::{endpoint_of, socket_addr_of};
pub use heartbeat::{monotonic_ns, spawn_heartbeat};
pub use maps::{ConnCounters, DatapathMaps};
pub use object::EBPF_OBJECT;
pub use policy::PolicyMaps;
pub use splice::{RawUp, Splice, SpliceMaps};

use crate::settings::{FailMode, Settings};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "loading the eBPF object failed: {0} (is BPF enabled in this kernel? try `meshd check`)"
    )]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no program {0}: the embedded object does not match this meshd")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map {0}: the embedded object does not match this meshd")]
    MissingMap(&'static str),
    #[error("eBPF program {program}: {action} failed: {source}")]
    Program {
        program: String,
        action: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("opening the attach-point cgroup {path}: {source}")]
    Cgroup {
        path: String,
        source: std::io::Error,
    },
    #[error("reading meshd's network namespace cookie (SO_NETNS_COOKIE needs Linux 5.14+): {0}")]
    NetnsCookie(#[source] std::io::Error),
}

/// The loaded and attached programs. Dropping it detaches everything.
pub struct Datapath {
    _ebpf: Ebpf,
    _sockhash: Option<SockHash<MapData, SockPair>>,
    pub maps: Arc<DatapathMaps>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))?;
    T::try_from(map).map_err(|source| DatapathError::Map { map: name, source })
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

fn prog_err(program: &str, action: &'static str) -> impl Fn(ProgramError) -> DatapathError {
    let program = program.to_string();
    move |source| DatapathError::Program {
        program: program.clone(),
        action,
        source,
    }
}

impl Datapath {
    /// Loads the programs, writes the settings into their maps, and attaches them to `attach`.
    /// `daemon_cgroup` is the id of the unmanaged cgroup meshd runs in.
    pub fn start(
        settings: &Settings,
        attach: &Path,
        daemon_cgroup: u64,
    ) -> Result<Datapath, DatapathError> {
        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .map_err(DatapathError::Load)?;

        let mut config: Array<MapData, ProxyConfig> = take(&mut ebpf, names::CONFIG)?;
        let mut flags = 0;
        if settings.sockmap {
            flags |= CFG_SOCKMAP;
        }
        if settings.kernel_splice() {
            flags |= CFG_SPLICE;
        }
        if settings.fail_mode == FailMode::Closed {
            flags |= CFG_FAIL_CLOSED;
        }
        let cfg = ProxyConfig {
            meshd_cgroup: daemon_cgroup,
            heartbeat_timeout_ns: settings.heartbeat_timeout.as_nanos() as u64,
            outbound_port: settings.outbound_port as u32,
            flags,
            meshd_netns: own_netns_cookie()?,
        };
        config.set(0, cfg, 0).map_err(map_err(names::CONFIG))?;

        let mut ports: HashMap<MapData, u32, u32> = take(&mut ebpf, names::EXCLUDED_PORTS)?;
        for port in settings.own_ports().iter().chain(&settings.exclude_ports) {
            ports
                .insert(*port as u32, 1, 0)
                .map_err(map_err(names::EXCLUDED_PORTS))?;
        }
        let mut v4: LpmTrie<MapData, [u8; 4], u32> = take(&mut ebpf, names::EXCLUDED_V4)?;
        let mut v6: LpmTrie<MapData, [u8; 16], u32> = take(&mut ebpf, names::EXCLUDED_V6)?;
        for cidr in &settings.exclude_cidrs {
            match cidr.addr {
                std::net::IpAddr::V4(a) => v4
                    .insert(&Key::new(cidr.prefix as u32, a.octets()), 1, 0)
                    .map_err(map_err(names::EXCLUDED_V4))?,
                std::net::IpAddr::V6(a) => v6
                    .insert(&Key::new(cidr.prefix as u32, a.octets()), 1, 0)
                    .map_err(map_err(names::EXCLUDED_V6))?,
            }
        }

        let splice = if settings.kernel_splice() {
            Some(Arc::new(splice_maps(&mut ebpf)?))
        } else {
            None
        };
        let maps = Arc::new(DatapathMaps {
            heartbeat: std::sync::Mutex::new(take(&mut ebpf, names::HEARTBEAT)?),
            managed: std::sync::Mutex::new(take(&mut ebpf, names::MANAGED)?),
            orig_by_tuple: take(&mut ebpf, names::ORIG_BY_TUPLE)?,
            conn_stats: Mutex::new(
                take::<PerCpuHashMap<MapData, u64, proxy_common::ConnStats>>(
                    &mut ebpf,
                    names::CONN_STATS,
                )?,
            ),
            counters: take::<PerCpuArray<MapData, u64>>(&mut ebpf, names::COUNTERS)?,
            policy: Arc::new(PolicyMaps {
                peer_auth: std::sync::Mutex::new(take(&mut ebpf, policy_names::PEER_AUTH)?),
                deny: std::sync::Mutex::new(take(&mut ebpf, policy_names::CONNECT_DENY)?),
                counters: take(&mut ebpf, policy_names::POLICY_COUNTERS)?,
            }),
            on_enrol: std::sync::OnceLock::new(),
            splice,
        });
        // Beat once before attaching, so the first connects are redirected, not failed open.
        maps.beat();

        let cgroup = File::open(attach).map_err(|source| DatapathError::Cgroup {
            path: attach.display().to_string(),
            source,
        })?;
        attach_all(&mut ebpf, &cgroup)?;

        let sockhash = if settings.sockmap {
            let sockhash: SockHash<MapData, SockPair> = take(&mut ebpf, names::SOCKHASH)?;
            let prog: &mut SkMsg = program(&mut ebpf, "meshd_sk_msg")?;
            prog.load().map_err(prog_err("meshd_sk_msg", "load"))?;
            prog.attach(sockhash.fd())
                .map_err(prog_err("meshd_sk_msg", "attach"))?;
            Some(sockhash)
        } else {
            None
        };
        Ok(Datapath {
            _ebpf: ebpf,
            _sockhash: sockhash,
            maps,
        })
    }
}

/// The kernel splice's maps, with the reply verdict attached to the upstream sockets' map.
fn splice_maps(ebpf: &mut Ebpf) -> Result<SpliceMaps, DatapathError> {
    let to: SockHash<MapData, SockPair> = take(ebpf, names::SPLICE_TO)?;
    let name = "meshd_reply";
    let verdict: &mut SkSkb = program(ebpf, name)?;
    verdict.load().map_err(prog_err(name, "load"))?;
    verdict.attach(to.fd()).map_err(prog_err(name, "attach"))?;
    Ok(SpliceMaps {
        to: Mutex::new(to),
        forwarded: Mutex::new(take(ebpf, names::FORWARDED)?),
        handed: Mutex::new(take(ebpf, names::HANDED)?),
        reply_to: Mutex::new(take(ebpf, names::REPLY_TO)?),
        reply_forwarded: Mutex::new(take(ebpf, names::REPLY_FORWARDED)?),
        reply_counts: Mutex::new(take(ebpf, names::REPLY_COUNTS)?),
        reply_sent: Mutex::new(take(ebpf, names::REPLY_SENT)?),
        pair_cookie: Mutex::new(take(ebpf, names::PAIR_COOKIE)?),
    })
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?;
    prog.try_into().map_err(prog_err(name, "type check"))
}

/// Every cgroup program, in the order they are attached.
const SOCK_ADDR_PROGRAMS: [&str; 4] = [
    "meshd_connect4",
    "meshd_connect6",
    "meshd_getpeername4",
    "meshd_getpeername6",
];

fn attach_all(ebpf: &mut Ebpf, cgroup: &File) -> Result<(), DatapathError> {
    // Everything that makes the redirect work is attached before connect4/6 start redirecting.
    {
        let name = "meshd_sockops";
        let p: &mut SockOps = program(ebpf, name)?;
        p.load().map_err(prog_err(name, "load"))?;
        p.attach(cgroup, CgroupAttachMode::Single)
            .map_err(prog_err(name, "attach"))?;
    }
    {
        let name = "meshd_getsockopt";
        let p: &mut CgroupSockopt = program(ebpf, name)?;
        p.load().map_err(prog_err(name, "load"))?;
        p.attach(cgroup, CgroupAttachMode::Single)
            .map_err(prog_err(name, "attach"))?;
    }
    for (name, kind) in [
        ("meshd_skb_ingress", CgroupSkbAttachType::Ingress),
        ("meshd_skb_egress", CgroupSkbAttachType::Egress),
    ] {
        let p: &mut CgroupSkb = program(ebpf, name)?;
        p.load().map_err(prog_err(name, "load"))?;
        p.attach(cgroup, kind, CgroupAttachMode::Single)
            .map_err(prog_err(name, "attach"))?;
    }
    for name in SOCK_ADDR_PROGRAMS.iter().rev() {
        let p: &mut CgroupSockAddr = program(ebpf, name)?;
        p.load().map_err(prog_err(name, "load"))?;
        p.attach(cgroup, CgroupAttachMode::Single)
            .map_err(prog_err(name, "attach"))?;
    }
    Ok(())
}

/// Loads (without attaching) every program of the embedded object; `meshd check` uses this to
/// prove the verifier accepts them on this kernel.
pub fn verify_programs() -> Result<usize, DatapathError> {
    let mut ebpf = EbpfLoader::new()
        .load(EBPF_OBJECT)
        .map_err(DatapathError::Load)?;
    let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_string()).collect();
    for name in &names {
        let prog = ebpf.program_mut(name).expect("listed above");
        let result = match prog {
            aya::programs::Program::CgroupSockAddr(p) => p.load(),
            aya::programs::Program::SockOps(p) => p.load(),
            aya::programs::Program::SkMsg(p) => p.load(),
            aya::programs::Program::SkSkb(p) => p.load(),
            aya::programs::Program::CgroupSockopt(p) => p.load(),
            aya::programs::Program::CgroupSkb(p) => p.load(),
            _ => Ok(()),
        };
        result.map_err(prog_err(name, "load"))?;
    }
    Ok(names.len())
}

/// The cookie of the network namespace meshd runs in, read from a throwaway socket.
fn own_netns_cookie() -> Result<u64, DatapathError> {
    let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
        .and_then(|s| crate::pods::netns::cookie(&s));
    probe.map_err(DatapathError::NetnsCookie)
}
