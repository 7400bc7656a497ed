//! The ceiling for durable publishing: a bare loop of synced RocksDB
//! `WriteBatch`es on one thread, no gRPC and no broker. Each write holds
//! what a group commit of the broker holds: the messages under the broker's
//! keys, each value the size of a stored message with an empty key, and one
//! head. The columns use LZ4 like the broker's; the other options are
//! RocksDB's defaults.
//!
//! ```text
//! cargo bench -p tidings-server --bench rocksdb_ceiling -- --count 20000 --size 256 --batch 64
//! ```
//!
//! `--batch` is messages per synced write: compare it with the broker at the
//! same number of messages per group commit. Prints a `RESULT` line in the
//! format of `tidings bench`.

use std::time::Instant;

use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DB, DBCompressionType, Options, WriteBatch,
    WriteOptions,
};

struct Args {
    count: u64,
    size: usize,
    batch: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        count: 20_000,
        size: 256,
        batch: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or(format!("{name} needs a value"))?
                .parse::<u64>()
                .map_err(|e| format!("{name}: {e}"))
        };
        match flag.as_str() {
            "--count" => args.count = value("--count")?,
            "--size" => args.size = usize::try_from(value("--size")?).map_err(|e| e.to_string())?,
            "--batch" => args.batch = value("--batch")?.max(1),
            // cargo bench passes --bench; anything else is a mistake.
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn open(path: &std::path::Path) -> Result<DB, rocksdb::Error> {
    let mut db_options = Options::default();
    db_options.create_if_missing(true);
    db_options.create_missing_column_families(true);
    db_options.set_max_background_jobs(2);
    let mut column = Options::default();
    column.set_compression_type(DBCompressionType::Lz4);
    column.set_block_based_table_factory(&BlockBasedOptions::default());
    let families =
        ["messages", "meta"].map(|name| ColumnFamilyDescriptor::new(name, column.clone()));
    DB::open_cf_descriptors(&db_options, path, families)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let dir = tempfile::tempdir()?;
    let db = open(dir.path())?;
    let messages = db.cf_handle("messages").ok_or("no messages column")?;
    let meta = db.cf_handle("meta").ok_or("no meta column")?;
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    // A stored message: format, publish time, key and attribute count (17
    // bytes with an empty key and no attributes), then the payload.
    let value: Vec<u8> = (0..args.size + 17).map(|i| b'a' + (i % 26) as u8).collect();

    let started = Instant::now();
    let mut offset = 0u64;
    while offset < args.count {
        let mut batch = WriteBatch::default();
        let end = (offset + args.batch).min(args.count);
        for o in offset..end {
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&1u64.to_be_bytes());
            key[8..].copy_from_slice(&o.to_be_bytes());
            batch.put_cf(messages, key, &value);
        }
        batch.put_cf(meta, b"H\0\0\0\0\0\0\0\x01", end.to_be_bytes());
        db.write_opt(batch, &sync)?;
        offset = end;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "RESULT rocksdb-synced-writebatch(batch={}): msgs={} size={}B elapsed={elapsed:.3}s rate={:.0} msg/s  {:.1} MB/s",
        args.batch,
        args.count,
        args.size,
        args.count as f64 / elapsed,
        args.count as f64 * args.size as f64 / elapsed / 1e6,
    );
    Ok(())
}
