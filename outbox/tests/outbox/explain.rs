//! `explain` of the claim's queries on FerretDB, exactly as the store
//! builds them (`promhub_outbox::mongo::queries`). Prints the server's
//! plans and checks that the indexes meant for them exist. FerretDB (SQLite
//! backend) runs its queries as table scans, so the plan itself is printed,
//! not asserted; on MongoDB the same indexes serve these queries.
//!
//! `cargo test -p promhub-outbox --test outbox explain -- --nocapture`

use futures_util::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use promhub_outbox::mongo::queries;
use promhub_outbox::{NewRecord, OutboxStore, now_ms};

use super::common::ferret_outbox;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_queries_have_their_indexes() {
    let Some(store) = ferret_outbox("the_claim_queries_have_their_indexes").await else {
        return;
    };
    for n in 0..20 {
        let record = NewRecord::new("orders.created", &n)
            .expect("record")
            .key(format!("k{}", n % 4));
        store.enqueue(record, now_ms()).await.expect("enqueue");
    }
    let collection = store.collection();
    let db = collection.client().database(&collection.namespace().db);
    let name = collection.name().to_owned();
    let keys = vec!["k0".to_owned(), "k1".to_owned()];
    let newest = Bson::DateTime(mongodb::bson::DateTime::now());
    let explained = [
        (
            "due records (claim step 1)",
            doc! { "find": &name, "filter": queries::due(now_ms()), "sort": queries::creation_order(), "limit": 400 },
        ),
        (
            "key heads (claim step 2)",
            doc! { "find": &name, "filter": queries::key_heads(&keys, &newest), "sort": queries::creation_order(), "limit": 800 },
        ),
        (
            "read back by token (claim step 4)",
            doc! { "find": &name, "filter": { "claim_token": "t", "status": "claimed" }, "sort": queries::creation_order() },
        ),
    ];
    for (what, command) in explained {
        let plan = db
            .run_command(doc! { "explain": command, "verbosity": "queryPlanner" })
            .await
            .expect("explain");
        let planner = plan.get_document("queryPlanner").cloned().unwrap_or(plan);
        println!("explain {what}: {planner}");
    }
    let indexes: Vec<Document> = collection
        .list_indexes()
        .await
        .expect("list indexes")
        .try_collect::<Vec<_>>()
        .await
        .expect("indexes")
        .into_iter()
        .map(|model| model.keys)
        .collect();
    println!("indexes: {indexes:?}");
    for wanted in [
        doc! { "status": 1, "next_attempt_at": 1 },
        doc! { "status": 1, "lease_until": 1 },
        doc! { "key": 1, "status": 1, "created_at": 1, "_id": 1 },
        doc! { "claim_token": 1 },
        doc! { "created_at": 1, "_id": 1 },
        doc! { "sent_at": 1 },
    ] {
        assert!(
            indexes.contains(&wanted),
            "missing index {wanted}: {indexes:?}"
        );
    }
}
