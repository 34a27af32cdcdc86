//! The durable store: desired state in a redb file in the data directory.
//!
//! One table per kind, name → JSON record. Every mutation is one write transaction,
//! so an apply of several objects is all-or-nothing on disk as well.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::hpa_controller::HpaRecord;
use crate::state::{ModelRecord, Persist, ServerConfigRecord, ServerRecord};

const MODELS: TableDefinition<&str, &[u8]> = TableDefinition::new("models");
const SERVERS: TableDefinition<&str, &[u8]> = TableDefinition::new("servers");
const CONFIGS: TableDefinition<&str, &[u8]> = TableDefinition::new("server_configs");
const HPAS: TableDefinition<&str, &[u8]> = TableDefinition::new("hpas");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("store: {0}")]
    Redb(String),
    #[error("store record {key:?} is corrupt: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

fn redb_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Redb(e.to_string())
}

/// The desired state on disk.
pub struct Store {
    db: Database,
}

/// Everything the store holds.
pub struct Snapshot {
    pub models: Vec<ModelRecord>,
    pub servers: Vec<ServerRecord>,
    pub configs: Vec<ServerConfigRecord>,
    pub hpas: Vec<HpaRecord>,
}

impl Store {
    /// Opens (or creates) `DIR/state.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("state.redb");
        let db = Database::create(&path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let txn = db.begin_write().map_err(redb_err)?;
        {
            txn.open_table(MODELS).map_err(redb_err)?;
            txn.open_table(SERVERS).map_err(redb_err)?;
            txn.open_table(CONFIGS).map_err(redb_err)?;
            txn.open_table(HPAS).map_err(redb_err)?;
        }
        txn.commit().map_err(redb_err)?;
        Ok(Self { db })
    }

    pub fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(redb_err)?;
        Ok(Snapshot {
            models: read_all(&txn, MODELS)?,
            servers: read_all(&txn, SERVERS)?,
            configs: read_all(&txn, CONFIGS)?,
            hpas: read_all(&txn, HPAS)?,
        })
    }

    /// Writes a batch of changes in one transaction.
    pub fn persist(&self, changes: &[Persist]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(redb_err)?;
        {
            let mut models = txn.open_table(MODELS).map_err(redb_err)?;
            let mut servers = txn.open_table(SERVERS).map_err(redb_err)?;
            let mut configs = txn.open_table(CONFIGS).map_err(redb_err)?;
            let mut hpas = txn.open_table(HPAS).map_err(redb_err)?;
            for change in changes {
                match change {
                    Persist::PutModel(r) => {
                        put(&mut models, r.model.name.as_str(), r)?;
                    }
                    Persist::DeleteModel(n) => {
                        models.remove(n.as_str()).map_err(redb_err)?;
                    }
                    Persist::PutServer(r) => {
                        put(&mut servers, r.server.name.as_str(), r)?;
                    }
                    Persist::DeleteServer(n) => {
                        servers.remove(n.as_str()).map_err(redb_err)?;
                    }
                    Persist::PutConfig(r) => {
                        put(&mut configs, &r.config.name, r)?;
                    }
                    Persist::DeleteConfig(n) => {
                        configs.remove(n.as_str()).map_err(redb_err)?;
                    }
                    Persist::PutHpa(r) => {
                        put(&mut hpas, r.name(), r)?;
                    }
                    Persist::DeleteHpa(n) => {
                        hpas.remove(n.as_str()).map_err(redb_err)?;
                    }
                }
            }
        }
        txn.commit().map_err(redb_err)
    }
}

fn put<T: Serialize>(
    table: &mut redb::Table<&str, &[u8]>,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Corrupt {
        key: key.to_owned(),
        source,
    })?;
    table.insert(key, bytes.as_slice()).map_err(redb_err)?;
    Ok(())
}

fn read_all<T: DeserializeOwned>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<&str, &[u8]>,
) -> Result<Vec<T>, StoreError> {
    let table = txn.open_table(def).map_err(redb_err)?;
    let mut out = Vec::new();
    for row in table.iter().map_err(redb_err)? {
        let (k, v) = row.map_err(redb_err)?;
        let rec = serde_json::from_slice(v.value()).map_err(|source| StoreError::Corrupt {
            key: k.value().to_owned(),
            source,
        })?;
        out.push(rec);
    }
    Ok(out)
}
