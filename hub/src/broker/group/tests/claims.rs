//! A group shared by several hubs, driven by hand: claims before first
//! deliveries, events held elsewhere, and the answers of status checks.

use super::*;
use crate::broker::group::claims::ClaimState;
use crate::store::mongo::{ClaimOutcome, ClaimStatus};

fn shared(cursor: u64) -> Harness {
    let mut h = Harness::new(cursor);
    h.group.claims = ClaimState::enabled();
    h
}

fn claim_answer(h: &mut Harness, won: &[u64], lost: &[u64]) {
    let (group, mut fx) = h.fx();
    group.on_claimed(
        &ClaimOutcome {
            won: won.to_vec(),
            lost: lost.to_vec(),
        },
        &mut fx,
    );
}

fn status(h: &mut Harness, answers: &[(u64, ClaimStatus)]) {
    let (group, mut fx) = h.fx();
    group.on_status(answers, &mut fx);
}

#[tokio::test]
async fn nothing_is_delivered_before_it_is_claimed_and_lost_claims_hold_the_cursor() {
    let mut h = shared(0);
    let out = h.join(1, 2);
    h.live(&[event(1, "jobs.a"), event(2, "jobs.b"), event(3, "jobs.c")]);
    // Room for two: two claims (first attempts), in seq order; nothing sent.
    assert_eq!(h.group.take_claims(), Some((vec![(1, 1), (2, 1)], false)));
    assert!(deliveries(&out).await.is_empty());
    // One request at a time.
    assert_eq!(h.group.take_claims(), None);
    claim_answer(&mut h, &[2], &[1]);
    assert_eq!(ids(&deliveries(&out).await), ["e2"]);
    // The member has room for one more: event 3 is claimed next.
    assert_eq!(h.group.take_claims(), Some((vec![(3, 1)], false)));
    claim_answer(&mut h, &[3], &[]);
    assert_eq!(ids(&deliveries(&out).await), ["e3"]);
    let (g, mut fx) = h.fx();
    g.ack(holder(g, "e2"), &mut fx);
    g.ack(holder(g, "e3"), &mut fx);
    // Event 1 is another hub's: the cursor waits for it.
    assert_eq!(g.cursor(), 0);
    assert_eq!(g.held_elsewhere(), 1);
    // The finished claims are to be marked done.
    assert_eq!(g.take_claim_writes(), Some((vec![2, 3], vec![])));
    g.on_claim_writes(None);
    assert_eq!(g.take_status_check(), Some(vec![1]));
    status(&mut h, &[(1, ClaimStatus::Held)]);
    assert_eq!(h.group.cursor(), 0);
    assert_eq!(h.group.take_status_check(), Some(vec![1]));
    status(&mut h, &[(1, ClaimStatus::Done)]);
    assert_eq!(h.group.cursor(), 3);
    assert_eq!(h.group.held_elsewhere(), 0);
    assert_eq!(h.group.take_status_check(), None);
    // Not this hub's claim: nothing to mark.
    assert_eq!(h.group.take_claim_writes(), None);
    assert!(deliveries(&out).await.is_empty());
}

#[tokio::test]
async fn a_dead_hubs_event_is_taken_over_with_its_attempts_and_a_free_one_claimed_again() {
    let mut h = shared(0);
    let out = h.join(1, 10);
    h.live(&[event(1, "jobs.a"), event(2, "jobs.b")]);
    assert_eq!(h.group.take_claims(), Some((vec![(1, 1), (2, 1)], false)));
    claim_answer(&mut h, &[], &[1, 2]);
    assert!(deliveries(&out).await.is_empty());
    assert_eq!(h.group.take_status_check(), Some(vec![1, 2]));
    status(
        &mut h,
        &[
            (1, ClaimStatus::TakenOver { attempts: 1 }),
            (2, ClaimStatus::Free),
        ],
    );
    h.load_bodies();
    // The taken-over event goes out as a second attempt at once; the free
    // one is claimed first.
    assert_eq!(deliveries(&out).await, [("e1".to_owned(), 2)]);
    assert_eq!(h.group.take_claims(), Some((vec![(2, 1)], false)));
    claim_answer(&mut h, &[2], &[]);
    h.load_bodies();
    assert_eq!(deliveries(&out).await, [("e2".to_owned(), 1)]);
    // A taken-over attempt is part of the group's durable state.
    let update = h.group.take_update().unwrap();
    assert_eq!(attempts_in(&update), [(1, 1)]);
}

#[tokio::test]
async fn the_last_member_leaving_gives_this_hubs_claims_back() {
    let mut h = shared(0);
    let _out = h.join(1, 10);
    h.live(&[event(1, "jobs.a"), event(2, "jobs.b")]);
    assert_eq!(h.group.take_claims(), Some((vec![(1, 1), (2, 1)], false)));
    claim_answer(&mut h, &[1, 2], &[]);
    let (g, mut fx) = h.fx();
    g.ack(holder(g, "e1"), &mut fx);
    g.remove_member(1, &mut fx);
    // e1 is finished; e2 (its delivery failed with the disconnect) goes
    // back to the database for another hub's members.
    assert_eq!(g.take_claim_writes(), Some((vec![1], vec![2])));
    // A claim answered after everyone left is given back too.
    let mut h = shared(0);
    let _out = h.join(1, 10);
    h.live(&[event(1, "jobs.a")]);
    assert_eq!(h.group.take_claims(), Some((vec![(1, 1)], false)));
    let (g, mut fx) = h.fx();
    g.remove_member(1, &mut fx);
    claim_answer(&mut h, &[1], &[]);
    assert_eq!(h.group.take_claim_writes(), Some((vec![], vec![1])));
}
