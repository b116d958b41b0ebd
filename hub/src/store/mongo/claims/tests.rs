//! Claims of three hubs on one FerretDB: one winner per event, status
//! answers, take-over from a hub whose lease ran out, release, pruning
//! below the stored cursor.

use anyhow::Result;
use mongodb::bson::{DateTime, Document, doc};
use promhub_core::Pattern;
use promhub_core::frames::Group;

use super::super::codec::group_id;
use super::super::queries;
use super::super::test_server::FerretDb;
use super::{ClaimOutcome, ClaimStatus, GroupClaims};
use crate::store::GroupKey;

fn now_ms() -> i64 {
    DateTime::now().timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hub_wins_each_event_and_a_dead_hubs_claims_are_taken_over_once() -> Result<()> {
    let Some(server) = FerretDb::shared_or_skip("group_claims") else {
        return Ok(());
    };
    let client = mongodb::Client::with_uri_str(server.uri("group_claims")).await?;
    let db = client.database("group_claims");
    db.drop().await?;
    let write_concern = doc! { "w": 1 };
    let [a, b, c] =
        ["hub-a", "hub-b", "hub-c"].map(|hub| GroupClaims::new(&db, &write_concern, hub));
    let hubs = db.collection::<Document>(crate::cluster::HUBS_COLLECTION);
    let lease = |until: i64| doc! { "$set": { "lease_until": DateTime::from_millis(until) } };
    for hub in ["hub-a", "hub-b", "hub-c"] {
        hubs.update_one(doc! { "_id": hub }, lease(now_ms() + 60_000))
            .upsert(true)
            .await?;
    }
    let key = GroupKey::new(&Pattern::parse("jobs.*")?, &Group::parse("g")?);

    let first = a.claim(&key, &[(1, 1), (2, 1), (3, 1)], true).await?;
    assert_eq!(
        first,
        ClaimOutcome {
            won: vec![1, 2, 3],
            lost: vec![]
        }
    );
    let second = b.claim(&key, &[(2, 1), (3, 1), (4, 1)], true).await?;
    assert_eq!(
        second,
        ClaimOutcome {
            won: vec![4],
            lost: vec![2, 3]
        }
    );

    // A acknowledged 2 (its group flush wrote the done mark) and gave 1
    // back; B finished 4 (its claim says done).
    let groups = db.collection::<Document>(queries::GROUPS);
    groups
        .update_one(
            doc! { "_id": group_id(&key) },
            doc! { "$addToSet": { "done": 2_i64 }, "$max": { "cursor": 0_i64 } },
        )
        .upsert(true)
        .await?;
    a.release(&key, &[1]).await?;
    b.finish(&key, &[4]).await?;
    assert_eq!(
        c.status(&key, &[1, 2, 3, 4], now_ms()).await?,
        [
            (1, ClaimStatus::Free),
            (2, ClaimStatus::Done),
            (3, ClaimStatus::Held),
            (4, ClaimStatus::Done)
        ]
    );

    // A's lease runs out: B takes its unfinished claim over, C then finds
    // it held by B (alive).
    hubs.update_one(doc! { "_id": "hub-a" }, lease(now_ms() - 1))
        .await?;
    assert_eq!(
        b.status(&key, &[3], now_ms()).await?,
        [(3, ClaimStatus::TakenOver { attempts: 1 })]
    );
    assert_eq!(
        c.status(&key, &[3], now_ms()).await?,
        [(3, ClaimStatus::Held)]
    );
    // A taker that died before it rewrote the claim (its marker alone
    // is there) is taken over along the marker.
    assert_eq!(a.claim(&key, &[(6, 1)], true).await?.won, [6]);
    let claims = db.collection::<Document>(queries::GROUP_CLAIMS);
    claims
        .insert_one(
            doc! { "_id": format!("{}/{:020}~hub-a", group_id(&key), 6), "hub": "hub-gone" },
        )
        .await?;
    assert_eq!(
        c.status(&key, &[6], now_ms()).await?,
        [(6, ClaimStatus::TakenOver { attempts: 1 })]
    );
    assert_eq!(
        b.status(&key, &[6], now_ms()).await?,
        [(6, ClaimStatus::Held)]
    );
    // Another hub's give-back does not touch B's claim; a finish does,
    // whoever holds the claim now (A's member acknowledged it before A
    // was taken for dead: it is done).
    a.release(&key, &[3]).await?;
    assert_eq!(
        c.status(&key, &[3], now_ms()).await?,
        [(3, ClaimStatus::Held)]
    );
    a.finish(&key, &[3]).await?;
    assert_eq!(
        c.status(&key, &[3], now_ms()).await?,
        [(3, ClaimStatus::Done)]
    );

    // The stored cursor reaches 1003: everything up to it is done, and
    // a claim request prunes the claims more than 1,000 below it (seqs 1
    // to 3, with 3's marker); a claim won below the cursor (pruned, then
    // inserted again by a hub that had not heard) counts as lost.
    groups
        .update_one(
            doc! { "_id": group_id(&key) },
            doc! { "$max": { "cursor": 1003_i64 } },
        )
        .upsert(true)
        .await?;
    assert_eq!(
        c.status(&key, &[1, 3, 6], now_ms()).await?,
        [
            (1, ClaimStatus::Done),
            (3, ClaimStatus::Done),
            (6, ClaimStatus::Done)
        ]
    );
    // The same for an event done above the cursor (a flushed done mark).
    groups
        .update_one(
            doc! { "_id": group_id(&key) },
            doc! { "$addToSet": { "done": 1007_i64 } },
        )
        .await?;
    assert_eq!(
        c.claim(&key, &[(2, 1), (1005, 1), (1007, 1)], true).await?,
        ClaimOutcome {
            won: vec![1005],
            lost: vec![2, 1007]
        }
    );
    assert_eq!(
        claims.count_documents(doc! {}).await?,
        6,
        "seqs 4 and 6, the two markers of 6, 1005 and 1007 are left"
    );
    Ok(())
}

/// Three hubs finishing 60 claims each at the same moment: 180 matching
/// update statements at once. FerretDB 1.x held an SQL connection (of 100)
/// per matching non-`multi` statement until its command ended, so such
/// commands could wait for each other for ever and the database froze
/// (seen with three hubs sharing a group under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_finishing_many_claims_at_once_do_not_freeze_the_database() -> Result<()> {
    let Some(server) = FerretDb::shared_or_skip("claims_at_once") else {
        return Ok(());
    };
    let client = mongodb::Client::with_uri_str(server.uri("claims_at_once")).await?;
    let db = client.database("claims_at_once");
    db.drop().await?;
    let write_concern = doc! { "w": 1 };
    let seqs: Vec<u64> = (1..=60).collect();
    let wanted: Vec<(u64, u32)> = seqs.iter().map(|&seq| (seq, 1)).collect();
    let mut hubs = Vec::new();
    for name in ["hub-a", "hub-b", "hub-c"] {
        let key = GroupKey::new(&Pattern::parse("jobs.*")?, &Group::parse(name)?);
        let claims = GroupClaims::new(&db, &write_concern, name);
        let outcome = claims.claim(&key, &wanted, true).await?;
        assert_eq!(outcome.won, seqs, "{name}");
        hubs.push((claims, key));
    }
    let finishes = hubs.iter().map(|(claims, key)| claims.finish(key, &seqs));
    let all = futures_util::future::try_join_all(finishes);
    tokio::time::timeout(std::time::Duration::from_secs(30), all)
        .await
        .map_err(|_| anyhow::anyhow!("finishing 3 x 60 claims at once did not end in 30 s"))??;
    let done = db
        .collection::<Document>(queries::GROUP_CLAIMS)
        .count_documents(doc! { "done": true })
        .await?;
    assert_eq!(done, 180);
    Ok(())
}
