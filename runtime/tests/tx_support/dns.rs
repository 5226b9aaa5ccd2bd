//! An in-process DNS server on loopback (UDP), answering from a table with
//! real DNS messages (hickory-proto): MX, A, null MX, SERVFAIL, NXDOMAIN.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, MX};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

/// What the server answers for one (name, type).
#[derive(Clone, Debug)]
pub enum Answer {
    Records(Vec<RData>),
    ServFail,
    NxDomain,
}

#[derive(Clone, Default)]
pub struct Zone {
    table: Arc<Mutex<HashMap<(String, RecordType), Answer>>>,
}

impl Zone {
    fn key(name: &str, t: RecordType) -> (String, RecordType) {
        let mut n = name.to_ascii_lowercase();
        if !n.ends_with('.') {
            n.push('.');
        }
        (n, t)
    }

    pub fn set(&self, name: &str, t: RecordType, a: Answer) -> &Self {
        self.table.lock().unwrap().insert(Self::key(name, t), a);
        self
    }

    pub fn mx(&self, domain: &str, mx: &[(u16, &str)]) -> &Self {
        let recs = mx
            .iter()
            .map(|(p, n)| RData::MX(MX::new(*p, Name::from_ascii(n).unwrap())))
            .collect();
        self.set(domain, RecordType::MX, Answer::Records(recs))
    }

    pub fn a(&self, name: &str, ip: Ipv4Addr) -> &Self {
        self.set(name, RecordType::A, Answer::Records(vec![RData::A(A(ip))]))
    }

    fn answer(&self, name: &str, t: RecordType) -> Answer {
        let table = self.table.lock().unwrap();
        if let Some(a) = table.get(&Self::key(name, t)) {
            return a.clone();
        }
        let (n, _) = Self::key(name, t);
        if table.keys().any(|(k, _)| *k == n) {
            Answer::Records(Vec::new())
        } else {
            Answer::NxDomain
        }
    }
}

/// Starts the server; returns its address and the zone to fill.
pub async fn start() -> (SocketAddr, Zone) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let zone = Zone::default();
    let z = zone.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((len, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(req) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            let Some(q) = req.queries.first().cloned() else {
                continue;
            };
            let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
            resp.metadata.recursion_desired = req.metadata.recursion_desired;
            resp.metadata.recursion_available = true;
            resp.metadata.authoritative = true;
            resp.add_query(q.clone());
            match z.answer(&q.name().to_ascii(), q.query_type()) {
                Answer::Records(v) => {
                    for r in v {
                        resp.add_answer(Record::from_rdata(q.name().clone(), 60, r));
                    }
                }
                Answer::ServFail => resp.metadata.response_code = ResponseCode::ServFail,
                Answer::NxDomain => resp.metadata.response_code = ResponseCode::NXDomain,
            }
            if let Ok(bytes) = resp.to_vec() {
                let _ = sock.send_to(&bytes, peer).await;
            }
        }
    });
    (addr, zone)
}
