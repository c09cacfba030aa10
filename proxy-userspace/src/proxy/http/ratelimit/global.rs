//! The global limit: a GCRA counted atomically in Redis by one Lua script, one round trip per
//! request, over a small pool of connections per Redis address. Every call is bounded by a
//! timeout, so a Redis outage never stalls requests beyond it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    sync::Semaphore,
    time::Instant,
};

use super::Limited;
use crate::policy::model::GlobalRateLimit;

/// GCRA: KEYS[1] the bucket; ARGV[1] the emission interval in µs (unit / limit), ARGV[2] the
/// limit (burst). Returns {allowed, remaining, retry_after_us}. Redis's own clock keeps every
/// meshd on one timeline. A stored time beyond a full burst at this limit (counted under an
/// earlier, longer unit) is cut to a full burst, and stored so, so a raised limit waits one
/// emission interval at most, never out the old window.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local ttl = math.ceil(interval * limit / 1000) + 1000
if tat > now + interval * limit then
  tat = now + interval * limit
  redis.call('SET', KEYS[1], tat, 'PX', ttl)
end
local new_tat = tat + interval
local allow_at = new_tat - interval * limit
if allow_at > now then
  return {0, 0, allow_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', ttl)
return {1, math.floor((now - allow_at) / interval), 0}
"#;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("redis {addr} did not answer within {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("redis {addr}: unexpected reply {reply:?}")]
    Protocol { addr: String, reply: String },
}

pub struct Global {
    timeout: Duration,
    idle: Mutex<HashMap<String, Vec<TcpStream>>>,
    /// Connections open per Redis address, at most [`MAX_CONNECTIONS`]: past it a check waits
    /// for one (within the timeout) rather than open another, so a slow Redis is not also
    /// flooded with connections.
    open: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// When a failure was last logged, and how many went unlogged since.
    warned: Mutex<(Option<Instant>, u64)>,
}

/// Connections open per Redis address, and kept idle: every one stays for the next check.
const MAX_CONNECTIONS: usize = 64;

/// Redis failures are logged at most this often; the ones between are counted in the next
/// line (and each in `meshd_ratelimit_total{result="redis_error"}`).
const WARN_EVERY: Duration = Duration::from_secs(10);

fn unit_micros(unit: &str) -> u64 {
    match unit {
        "second" => 1_000_000,
        "hour" => 3_600_000_000,
        _ => 60_000_000,
    }
}

fn bulk(s: &str) -> String {
    format!("${}\r\n{s}\r\n", s.len())
}

impl Global {
    pub fn new(timeout: Duration) -> Global {
        Global {
            timeout,
            idle: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            warned: Mutex::new((None, 0)),
        }
    }

    /// Whether to log a Redis failure now: the first one, then one per [`WARN_EVERY`], with
    /// the number left unlogged since the last line.
    pub fn should_warn(&self) -> Option<u64> {
        let now = Instant::now();
        let mut w = self.warned.lock().expect("redis warn lock");
        match w.0 {
            Some(last) if now.duration_since(last) < WARN_EVERY => {
                w.1 += 1;
                None
            }
            _ => {
                let unlogged = w.1;
                *w = (Some(now), 0);
                Some(unlogged)
            }
        }
    }

    /// Counts one request against `key`; `Ok(remaining)` when allowed.
    pub async fn take(
        &self,
        key: &str,
        cfg: &GlobalRateLimit,
    ) -> Result<Result<u64, Limited>, RedisError> {
        let addr = cfg.redis.clone();
        let limit = u64::from(cfg.requests_per_unit.max(1));
        let interval = (unit_micros(&cfg.unit) / limit).max(1);
        // The key names the bucket, not its limit: an edited limit or unit applies to the
        // count so far (the debt GCRA keeps is time, which any limit reads, capped at one full
        // burst of the new limit), so a rollout with mixed limits shares one count.
        let redis_key = format!("meshd:rl:{key}");
        let args = [
            "EVAL",
            SCRIPT,
            "1",
            &redis_key,
            &interval.to_string(),
            &limit.to_string(),
        ];
        let cmd: String = std::iter::once(format!("*{}\r\n", args.len()))
            .chain(args.iter().map(|a| bulk(a)))
            .collect();
        let reply = tokio::time::timeout(self.timeout, self.round_trip(&addr, cmd.as_bytes()))
            .await
            .map_err(|_| RedisError::Timeout {
                addr: addr.clone(),
                after: self.timeout,
            })??;
        match reply.as_slice() {
            [1, remaining, _] => Ok(Ok(*remaining as u64)),
            [0, _, retry_us] => Ok(Err(Limited {
                limit,
                retry_after: Duration::from_micros(*retry_us as u64),
                global: true,
            })),
            other => Err(RedisError::Protocol {
                addr,
                reply: format!("{other:?}"),
            }),
        }
    }

    async fn round_trip(&self, addr: &str, cmd: &[u8]) -> Result<Vec<i64>, RedisError> {
        let slots = (self.open.lock().expect("redis pool lock"))
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_CONNECTIONS)))
            .clone();
        let _slot = slots.acquire_owned().await.expect("never closed");
        let connect = || async {
            TcpStream::connect(addr)
                .await
                .map_err(|source| RedisError::Io {
                    addr: addr.to_string(),
                    source,
                })
        };
        let pooled = self
            .idle
            .lock()
            .expect("redis pool lock")
            .get_mut(addr)
            .and_then(Vec::pop);
        let Some(conn) = pooled else {
            return self.exchange(connect().await?, addr, cmd).await;
        };
        match self.exchange(conn, addr, cmd).await {
            // A pooled connection Redis had closed (a restart, or its idle `timeout`): the
            // other idle ones most likely went with it. One more try, on a new connection.
            Err(RedisError::Io { .. }) => {
                self.idle.lock().expect("redis pool lock").remove(addr);
                self.exchange(connect().await?, addr, cmd).await
            }
            done => done,
        }
    }

    /// Sends `cmd` on `conn` and reads the reply; the connection goes back to the pool after.
    async fn exchange(
        &self,
        mut conn: TcpStream,
        addr: &str,
        cmd: &[u8],
    ) -> Result<Vec<i64>, RedisError> {
        let io = |source| RedisError::Io {
            addr: addr.to_string(),
            source,
        };
        conn.write_all(cmd).await.map_err(io)?;
        let mut reader = BufReader::new(&mut conn);
        let reply = read_int_array(&mut reader).await.map_err(|e| match e {
            ReadError::Io(source) => io(source),
            ReadError::Reply(reply) => RedisError::Protocol {
                addr: addr.to_string(),
                reply,
            },
        })?;
        let mut idle = self.idle.lock().expect("redis pool lock");
        let pool = idle.entry(addr.to_string()).or_default();
        if pool.len() < MAX_CONNECTIONS {
            pool.push(conn);
        }
        Ok(reply)
    }
}

enum ReadError {
    Io(std::io::Error),
    Reply(String),
}

async fn read_line<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<String, ReadError> {
    let mut line = Vec::new();
    loop {
        let b = r.read_u8().await.map_err(ReadError::Io)?;
        if b == b'\n' {
            break;
        }
        if line.len() > 4096 {
            return Err(ReadError::Reply("line too long".into()));
        }
        line.push(b);
    }
    Ok(String::from_utf8_lossy(&line)
        .trim_end_matches('\r')
        .to_string())
}

/// Reads a RESP array of integers (the script's reply).
async fn read_int_array<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<Vec<i64>, ReadError> {
    let head = read_line(r).await?;
    let n: usize = head
        .strip_prefix('*')
        .and_then(|n| n.parse().ok())
        .ok_or(ReadError::Reply(head.clone()))?;
    let mut out = Vec::with_capacity(n.min(8));
    for _ in 0..n.min(8) {
        let item = read_line(r).await?;
        out.push(
            item.strip_prefix(':')
                .and_then(|v| v.parse().ok())
                .ok_or(ReadError::Reply(item))?,
        );
    }
    Ok(out)
}
