//! Events with topics: a node publishes orders and stock levels; one subscriber takes
//! `orders.`, another `stock.`; each sees only its topics, numbered per topic; a late joiner
//! starts from the publisher's last values (snapshot) and then follows live events. Runs on
//! loopback and exits by itself.
//!
//! ```text
//! cargo run --example events
//! ```
//!
//! The same from the shell, through the proxy device's event forwarder:
//!
//! ```text
//! zmesh proxy --frontend tcp://127.0.0.1:4242 --backend tcp://127.0.0.1:4243 \
//!             --events-in tcp://127.0.0.1:4244 --events-out tcp://127.0.0.1:4245 &
//! zmesh sub tcp://127.0.0.1:4245 orders. &
//! zmesh pub tcp://127.0.0.1:4244 orders.created '{"id": 1, "item": "book"}'
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};
use zmesh::{Client, Delivery, Node, Subscriber};

/// Longest wait for any one event: the example never hangs.
const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u32,
    item: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    // The shop: a node that publishes (PUB on its own port) and keeps each topic's last
    // value for snapshots, served by its built-in `_zmesh.snapshot` method.
    let shop = Node::builder()
        .name("shop")
        .bind("tcp://127.0.0.1:0")
        .events("tcp://127.0.0.1:0")
        .last_value_cache(true)
        .start()
        .await?;
    let events_endpoint = shop
        .events_endpoint()
        .ok_or("the shop publishes")?
        .to_owned();
    let publisher = shop.publisher().ok_or("the shop publishes")?;
    let client = Client::new(shop.endpoint());
    println!("shop publishes on {events_endpoint}");

    // Two subscribers with different topic prefixes. A PUB socket drops what it sends
    // before a subscription has reached it; a snapshot waits for a marker published after
    // this subscriber's subscriptions are active, so once it returns nothing is missed.
    let mut billing = Subscriber::builder()
        .connect(&events_endpoint)
        .subscribe("orders.")
        .start::<Order>()
        .await?;
    billing.snapshot(&client, "orders.").await?;
    let mut warehouse = Subscriber::builder()
        .connect(&events_endpoint)
        .subscribe("stock.")
        .start::<u32>()
        .await?;
    warehouse.snapshot(&client, "stock.").await?;

    for (id, item) in [(1, "book"), (2, "lamp")] {
        let order = Order {
            id,
            item: item.into(),
        };
        publisher.publish("orders.created", &order).await?;
    }
    publisher.publish("stock.book", &41u32).await?;
    publisher.publish("stock.lamp", &7u32).await?;
    publisher
        .publish(
            "orders.shipped",
            &Order {
                id: 1,
                item: "book".into(),
            },
        )
        .await?;

    for _ in 0..3 {
        match next(&mut billing).await? {
            Delivery::Event(e) => println!(
                "billing   got {} #{}: {:?}",
                e.topic,
                e.seq.unwrap_or_default(),
                e.payload
            ),
            Delivery::Gap(gap) => println!("billing   missed {gap:?}"),
        }
    }
    for _ in 0..2 {
        match next(&mut warehouse).await? {
            Delivery::Event(e) => println!(
                "warehouse got {} #{}: {} in stock",
                e.topic,
                e.seq.unwrap_or_default(),
                e.payload
            ),
            Delivery::Gap(gap) => println!("warehouse missed {gap:?}"),
        }
    }

    // A late joiner: current state from the snapshot, then only newer live events.
    let mut dashboard = Subscriber::builder()
        .connect(&events_endpoint)
        .subscribe("stock.")
        .start::<u32>()
        .await?;
    let snapshot = dashboard.snapshot(&client, "stock.").await?;
    for entry in &snapshot.entries {
        println!(
            "dashboard state {} @#{}: {:?}",
            entry.topic, entry.seq, entry.value
        );
    }
    publisher.publish("stock.book", &40u32).await?;
    if let Delivery::Event(e) = next(&mut dashboard).await? {
        println!(
            "dashboard got {} #{}: {} in stock",
            e.topic,
            e.seq.unwrap_or_default(),
            e.payload
        );
    }

    let stats = billing.stats();
    println!(
        "billing: {} events, {} gaps; shop published {}",
        stats.received,
        stats.gaps,
        publisher.stats().published
    );
    shop.shutdown(Duration::from_secs(1)).await;
    Ok(())
}

/// The next delivery within [`WAIT`].
async fn next<T: serde::de::DeserializeOwned>(
    subscriber: &mut Subscriber<T>,
) -> Result<Delivery<T>, Box<dyn std::error::Error>> {
    match tokio::time::timeout(WAIT, subscriber.recv()).await {
        Ok(Some(delivery)) => Ok(delivery),
        Ok(None) => Err("the subscriber stopped".into()),
        Err(_) => Err(format!("no event within {WAIT:?}").into()),
    }
}
