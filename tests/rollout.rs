//! Staged rollout of a new module version: traffic split, stickiness, automatic rollback
//! and promotion, through the real gateway.

use crate::common::*;
use crate::reload::stamp_module;
use sluice::plugin::RolloutState;

fn rollout(percent: f64, extra: &str) -> String {
    format!(
        r#"
[plugins.stamp]
module = "{}"

[plugins.stamp.rollout]
module = "{}"
percent = {percent}
{extra}

[[routes]]
prefix = "/"
upstream = "echo"
plugins = ["stamp"]
"#,
        stamp_module("v1").display(),
        stamp_module("v2").display(),
    )
}

fn state(gw: &Running) -> RolloutState {
    gw.gateway.load().plugin("stamp").unwrap().rollout().unwrap().state()
}

#[tokio::test]
async fn the_new_version_serves_the_configured_share() {
    let gw = gateway(echo().await, &rollout(25.0, "min_requests = 100000\npromote_after = 100000"))
        .await;
    let n = 2000;
    let mut new = 0;
    for _ in 0..n {
        let r = get(gw.addr, "/", &[]).await;
        assert_eq!(r.status, 200);
        new += usize::from(r.header("x-stamp") == Some("v2"));
    }
    let share = new as f64 / n as f64;
    // Binomial sd for p = 0.25, n = 2000 is ~0.01: +-0.05 is five sd.
    assert!((0.20..=0.30).contains(&share), "v2 served {share:.3} of requests, expected 0.25");
    assert_eq!(state(&gw), RolloutState::Active);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_sticky_rollout_keeps_each_client_on_one_version() {
    let gw = gateway(
        echo().await,
        &rollout(50.0, "sticky = \"header:x-user\"\nmin_requests = 100000\npromote_after = 100000"),
    )
    .await;
    let mut versions_seen = std::collections::HashSet::new();
    for user in 0..40 {
        let user = format!("user-{user}");
        let first =
            get(gw.addr, "/", &[("x-user", &user)]).await.header("x-stamp").unwrap().to_owned();
        for _ in 0..5 {
            let r = get(gw.addr, "/", &[("x-user", &user)]).await;
            assert_eq!(r.header("x-stamp"), Some(first.as_str()), "{user} changed version");
        }
        versions_seen.insert(first);
    }
    assert_eq!(versions_seen.len(), 2, "40 users at 50% should see both versions");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_trapping_new_version_is_rolled_back_automatically() {
    let gw =
        gateway(echo().await, &rollout(50.0, "min_requests = 10\nmax_error_rate = 0.01")).await;
    // v2 traps on these requests; v1 serves them fine.
    let trap_v2 = [("x-stamp-trap", "v2")];
    let mut failed = 0;
    let mut streak = 0;
    for _ in 0..500 {
        let r = get(gw.addr, "/", &trap_v2).await;
        if r.status == 200 {
            assert_eq!(r.header("x-stamp"), Some("v1"));
            streak += 1;
        } else {
            assert_eq!(r.status, 500);
            failed += 1;
            streak = 0;
        }
        if streak == 100 {
            break;
        }
    }
    assert_eq!(state(&gw), RolloutState::RolledBack);
    assert_eq!(streak, 100, "after the rollback every request is served by v1");
    // Rolled back at the first verdict: min_requests calls, of which all failed.
    assert_eq!(failed, 10);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_well_behaved_new_version_is_promoted() {
    let gw = gateway(
        echo().await,
        &rollout(50.0, "min_requests = 10\npromote_after = 30\nmax_p99_increase = \"1s\""),
    )
    .await;
    let mut requests = 0;
    while state(&gw) == RolloutState::Active {
        assert_eq!(get(gw.addr, "/", &[]).await.status, 200);
        requests += 1;
        assert!(requests < 1000, "not promoted after {requests} requests");
    }
    assert_eq!(state(&gw), RolloutState::Promoted);
    for _ in 0..50 {
        assert_eq!(get(gw.addr, "/", &[]).await.header("x-stamp"), Some("v2"));
    }
    gw.shutdown().await;
}
