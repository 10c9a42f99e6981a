//! Endpoints that are Pods, with a real DNS server: dnsmasq in its own namespace answers a
//! headless-service name with one A record per replica Pod (TTL 1 s); pod A's app calls the
//! service's virtual IP (`vips`), and its sidecar balances every request over the Pods that
//! DNS names. Replicas are added and removed (DNS changes, then SIGHUP) while traffic flows:
//! zero failed requests, a new replica takes traffic within seconds, a removed one gets no
//! more, each replica takes its share, and `docmesh_endpoint_requests_total` agrees with what
//! each replica saw. Needs root and dnsmasq.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use docmesh_tests::netns::probe::Responder;
use docmesh_tests::netns::sidecar::{metric, APP};
use docmesh_tests::netns::{Mesh, Pod};

const TD: &str = "endpoints.docmesh.test";
const NAME: &str = "docservice.mesh.test";
const VIP: &str = "10.96.0.12:8080";

/// `/etc/netns/NETNS/resolv.conf`, which `ip netns exec` mounts over `/etc/resolv.conf`;
/// removed on drop.
struct ResolvConf(std::path::PathBuf);

impl ResolvConf {
    fn point(pod: &Pod, nameserver: &str) -> ResolvConf {
        let dir = std::path::Path::new("/etc/netns").join(&pod.netns);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\n"),
        )
        .unwrap();
        ResolvConf(dir)
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One batch of requests over one keep-alive connection to the VIP: the status of each.
fn batch(a: &Pod, n: usize) -> Vec<u16> {
    let url = format!("http://{VIP}/doc");
    let mut argv = vec!["curl", "-sS", "--max-time", "20", "-w", "%{http_code}\\n"];
    for _ in 0..n {
        argv.extend(["-o", "/dev/null", url.as_str()]);
    }
    let out = a.exec_as(APP.0, APP.1, &argv);
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.trim().parse().unwrap_or(0))
            .collect(),
        Err(e) => {
            eprintln!("curl batch failed: {e}");
            vec![0; n]
        }
    }
}

fn seen(r: &Responder) -> usize {
    r.heads().len()
}

#[test]
fn netns_endpoints_follow_headless_dns_while_traffic_flows() {
    if std::process::Command::new("dnsmasq")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("dnsmasq is needed (tests/scripts/install-deps.sh installs dnsmasq-base)");
    }
    let mesh = Mesh::new(
        TD,
        &["a", "dns", "r1", "r2", "r3"],
        env!("CARGO_BIN_EXE_docmesh-netns-proxy"),
    );
    let a = mesh.pod("a");
    let dns = mesh.pod("dns");
    let replicas = [mesh.pod("r1"), mesh.pod("r2"), mesh.pod("r3")];

    // The DNS server: the headless name from a hosts file, TTL 1 s, re-read on SIGHUP.
    let hosts = mesh.root().join("headless.hosts");
    let write_hosts = |members: &[&Pod]| {
        let text: String = members
            .iter()
            .map(|p| format!("{} {NAME}\n", p.ipv4))
            .collect();
        std::fs::write(&hosts, text).unwrap();
    };
    write_hosts(&[replicas[0], replicas[1]]);
    let dns_log = mesh.root().join("dnsmasq.log");
    mesh.log_on_failure(dns_log.clone());
    let dnsmasq = dns
        .spawn_logged(
            None,
            &[
                "dnsmasq",
                "--keep-in-foreground",
                "--log-facility=-",
                "--log-queries",
                "--no-resolv",
                "--no-hosts",
                &format!("--addn-hosts={}", hosts.display()),
                "--local-ttl=1",
                "--user=root",
                "--bind-interfaces",
                &format!("--listen-address={}", dns.ipv4),
            ],
            &dns_log,
        )
        .unwrap();
    let reload = |members: &[&Pod]| {
        write_hosts(members);
        dns.exec(&["kill", "-HUP", &dnsmasq.to_string()]).unwrap();
    };
    let _resolv = ResolvConf::point(a, &dns.ipv4.to_string());
    std::thread::sleep(Duration::from_millis(300));

    let service_id = format!("spiffe://{TD}/sa/docservice");
    let apps: Vec<Responder> = replicas
        .iter()
        .map(|r| Responder::http_echo(r, "0.0.0.0:8080".parse().unwrap()).unwrap())
        .collect();
    for r in replicas {
        mesh.start_sidecar_as(r, &service_id, "[inbound]\nmode = \"strict\"\n");
    }
    // resolve_interval is long: only the 1 s TTL can make the sidecar see changes quickly.
    let a_config = format!(
        "[inbound]\nmode = \"strict\"\n[outbound]\nresolve_interval = \"300s\"\n\
         [[outbound.services]]\nname = \"docservice\"\naddresses = [\"{NAME}:8080\"]\n\
         vips = [\"{VIP}\"]\nspiffe_id = \"{service_id}\"\n\
         [resilience.services.docservice.balance]\nstrategy = \"p2c-load\"\n"
    );
    mesh.start_sidecar_as(a, &format!("spiffe://{TD}/sa/client"), &a_config);

    // Two replicas in DNS: both take requests, the third none.
    let statuses = batch(a, 40);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let counts: Vec<usize> = apps.iter().map(seen).collect();
    eprintln!("r1, r2 in DNS: {counts:?}");
    assert_eq!(counts[0] + counts[1], 40);
    assert!(
        counts[0] >= 10 && counts[1] >= 10,
        "each replica takes its share: {counts:?}"
    );
    assert_eq!(counts[2], 0);

    // Traffic flows while replicas come and go.
    let stop = AtomicBool::new(false);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let s = batch(a, 10);
                results.lock().unwrap().extend(s);
            }
        });
        std::thread::sleep(Duration::from_secs(1));
        reload(&[replicas[0], replicas[1], replicas[2]]);
        std::thread::sleep(Duration::from_secs(4));
        let r3_after_add = seen(&apps[2]);
        eprintln!("r3 added: it has served {r3_after_add} requests 4 s later");
        let ok = r3_after_add > 0;
        reload(&[replicas[1], replicas[2]]);
        std::thread::sleep(Duration::from_secs(4));
        let r1_settled = seen(&apps[0]);
        std::thread::sleep(Duration::from_secs(3));
        let r1_later = seen(&apps[0]);
        stop.store(true, Ordering::SeqCst);
        assert!(ok, "the added replica took no traffic");
        assert_eq!(
            r1_later, r1_settled,
            "the removed replica still got requests"
        );
    });
    let results = results.lock().unwrap().clone();
    let failed = results.iter().filter(|s| **s != 200).count();
    eprintln!(
        "{} requests while replicas changed, {failed} failed",
        results.len()
    );
    assert!(
        results.len() >= 50,
        "too little traffic to judge: {}",
        results.len()
    );
    assert_eq!(failed, 0, "failed requests while replicas changed");

    // The two remaining replicas share new traffic.
    let before: Vec<usize> = apps.iter().map(seen).collect();
    assert!(batch(a, 60).iter().all(|s| *s == 200));
    let after: Vec<usize> = apps.iter().map(seen).collect();
    let share: Vec<usize> = (0..3).map(|i| after[i] - before[i]).collect();
    eprintln!("r2, r3 in DNS: new requests per replica {share:?}");
    assert_eq!(share[0], 0);
    assert!(share[1] >= 15 && share[2] >= 15, "{share:?}");

    // The per-endpoint metric agrees with what each replica saw.
    for (r, app) in replicas.iter().zip(&apps) {
        let m = metric(
            a,
            &format!(
                "docmesh_endpoint_requests_total{{service=\"docservice\",endpoint=\"{}:8080\"}}",
                r.ipv4
            ),
        );
        eprintln!("{}: metric {m}, replica saw {}", r.name, seen(app));
        assert_eq!(m as usize, seen(app), "{}", r.name);
    }
}
