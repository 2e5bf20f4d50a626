//! The native server's embedded store: one redb file implementing the service's key-value
//! port.
//!
//! redb is pure Rust (no C toolchain, nothing to run beside us), ACID with crash-safe
//! commits, and serialises write transactions, which makes `increment` and
//! `compare_and_swap` atomic across every thread of the process; the file lock keeps a
//! second process out.

use std::path::Path;

use medinfer_service::kv::{KeyValue, StoreError, check_sizes, decode_counter, encode_counter};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

/// A redb-backed key-value store.
#[derive(Debug)]
pub struct RedbKv {
    db: Database,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl RedbKv {
    /// Opens (or creates) the store file.
    pub fn open(path: &Path) -> Result<RedbKv, StoreError> {
        let db = Database::create(path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(TABLE).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(RedbKv { db })
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(TABLE).map_err(err)?;
        Ok(table.get(key).map_err(err)?.map(|v| v.value().to_vec()))
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, &str, &[u8]>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        let out = {
            let mut table = txn.open_table(TABLE).map_err(err)?;
            f(&mut table)?
        };
        txn.commit().map_err(err)?;
        Ok(out)
    }
}

impl KeyValue for RedbKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(key)
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        check_sizes(key, value)?;
        self.write(|t| t.insert(key, value).map(drop).map_err(err))
    }

    async fn set_many(&self, items: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        for (k, v) in items {
            check_sizes(k, v)?;
        }
        self.write(|t| {
            for (k, v) in items {
                t.insert(k.as_str(), v.as_slice()).map_err(err)?;
            }
            Ok(())
        })
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        if delta == 0 {
            return Ok(decode_counter(self.read(key)?.as_deref()));
        }
        self.write(|t| {
            let current =
                decode_counter(t.get(key).map_err(err)?.map(|v| v.value().to_vec()).as_deref());
            let value = current.saturating_add(delta);
            t.insert(key, encode_counter(value).as_slice()).map_err(err)?;
            Ok(value)
        })
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, StoreError> {
        check_sizes(key, new)?;
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut table = txn.open_table(TABLE).map_err(err)?;
            let current = table.get(key).map_err(err)?.map(|v| v.value().to_vec());
            if current.as_deref() != expected {
                drop(table);
                // Nothing changed: no commit, no fsync.
                txn.abort().map_err(err)?;
                return Ok(false);
            }
            table.insert(key, new).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(true)
    }
}
