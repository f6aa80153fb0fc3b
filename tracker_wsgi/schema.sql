-- tracker_wsgi schema, the one source for both stores: MySQL / MariaDB run it as written
-- (InnoDB), SQLite runs it translated (store/schema.py: types, AUTO_INCREMENT, KEY lines).
--
-- The tracker creates these tables itself in an empty database, at start-up and from
-- `tracker-wsgi migrate`, and records the schema's version in schema_version. A database
-- made by an earlier release is brought up to this one by the numbered migrations in
-- store/schema.py. To create the tables by hand instead:
--   mysql tracker < schema.sql && tracker-wsgi migrate
-- (migrate then records the version). Change this file only together with a migration.
--
-- Differences from BitTorrent::TrackerCGI's bt_* tables, and why:
--  * hashes and peer ids are BINARY(20), not CHAR(20) BINARY (MySQL stripped trailing
--    spaces from CHAR, so every read had to re-pad with RPAD);
--  * peers are keyed by (torrent, peer_id), not by peer_id alone: peer ids are not unique
--    across torrents, and one client seeds many torrents with one id;
--  * everything is InnoDB: MEMORY tables lost every peer and counter on a server restart;
--  * swarm counts are counted from the peer rows when asked, never kept in one row that every
--    writer bumps: on a Galera cluster two hosts writing one row fail each other's
--    transactions. Completions and departed bytes are kept per host (swarm_counts).

-- One row per torrent (swarm).
CREATE TABLE IF NOT EXISTS torrents (
    id          INT UNSIGNED    NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name        VARCHAR(255)    NOT NULL DEFAULT '',
    size        BIGINT UNSIGNED NOT NULL DEFAULT 0,   -- bytes of content
    path        VARCHAR(1024)   NOT NULL DEFAULT '',  -- .torrent file, relative to the torrent directory
    added       BIGINT UNSIGNED NOT NULL,             -- unix time of registration
    file_size   BIGINT UNSIGNED NOT NULL DEFAULT 0,   -- the .torrent file's size and mtime (ns) when
    file_mtime  BIGINT UNSIGNED NOT NULL DEFAULT 0,   --   last parsed: unchanged files are not re-read
    downloaded  INT UNSIGNED    NOT NULL DEFAULT 0,   -- completions counted before swarm_counts kept them
    transferred BIGINT UNSIGNED NOT NULL DEFAULT 0,   -- bytes downloaded by peers the refresh expired
    last_transfer BIGINT UNSIGNED NOT NULL DEFAULT 0, -- total downloaded at the last refresh (for the rate)
    last_done   INT UNSIGNED    NOT NULL DEFAULT 0,   -- downloaded at the last refresh
    info_sha256 BINARY(32)      NULL                  -- v2 and hybrid: the whole SHA-256 of info (BEP 52),
                                                      --   named in the feed as urn:btmh
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Every info hash that names a torrent: the v1 SHA-1 and, for v2 and hybrid torrents, the
-- SHA-256 truncated to 20 bytes (BEP 52), so both announce into the same swarm.
CREATE TABLE IF NOT EXISTS info_hashes (
    info_hash  BINARY(20)   NOT NULL PRIMARY KEY,
    torrent_id INT UNSIGNED NOT NULL,
    KEY by_torrent (torrent_id)
) ENGINE=InnoDB;

-- One row per peer in a swarm.
CREATE TABLE IF NOT EXISTS peers (
    torrent_id INT UNSIGNED      NOT NULL,
    peer_id    BINARY(20)        NOT NULL,
    ip         VARBINARY(16)     NOT NULL,  -- packed: 4 bytes IPv4, 16 bytes IPv6
    port       SMALLINT UNSIGNED NOT NULL,
    peer_key   VARBINARY(64)     NULL,      -- the client's `key`, opaque bytes
    state      TINYINT UNSIGNED  NOT NULL,  -- 0 leecher, 1 seed, 2 partial seed (BEP 21), 3 gone: a
                                            -- tombstone of a stop, so an older write landing later
                                            -- cannot bring the peer back (kept peer_timeout)
    bytes_left BIGINT UNSIGNED   NOT NULL,
    uploaded   BIGINT UNSIGNED   NOT NULL,
    downloaded BIGINT UNSIGNED   NOT NULL,
    completed  TINYINT UNSIGNED  NOT NULL DEFAULT 0,  -- this peer's completion was counted
    last_seen  BIGINT UNSIGNED   NOT NULL,  -- unix time of the last announce
    peer_rank  INT UNSIGNED      NOT NULL,  -- random, fixed at insert: peer lists are a window of
                                            -- ranks from a random start, never ORDER BY RAND()
    stamp      BIGINT UNSIGNED   NOT NULL DEFAULT 0,  -- when its announce was answered: the host's
                                            -- clock in ms x 65536 + the host's id. A write never
                                            -- replaces a newer one, whenever its batch lands.
    changed    BIGINT UNSIGNED   NOT NULL DEFAULT 0,  -- when the row was written, in the same form:
                                            -- hosts read each other's changes by it (by_changed)
    PRIMARY KEY (torrent_id, peer_id),
    KEY by_rank (torrent_id, peer_rank),
    KEY by_state_rank (torrent_id, state, peer_rank),
    KEY by_last_seen (last_seen),
    KEY by_changed (changed)
) ENGINE=InnoDB;

-- What each host counted of a swarm: completions, and bytes downloaded by peers that left
-- with a stop. A row per host, so hosts never write one row (a swarm's totals add the rows).
CREATE TABLE IF NOT EXISTS swarm_counts (
    torrent_id  INT UNSIGNED      NOT NULL,
    host        SMALLINT UNSIGNED NOT NULL,  -- the host's id (the low 16 bits of its stamps)
    downloaded  INT UNSIGNED      NOT NULL DEFAULT 0,
    transferred BIGINT UNSIGNED   NOT NULL DEFAULT 0,
    PRIMARY KEY (torrent_id, host)
) ENGINE=InnoDB;

-- One row: when the last refresh finished, and who holds the refresh lock until when.
-- A lease in the database, not a file lock, so one refresh runs at a time across every
-- process and every host; a refresh that dies loses the lock when its lease runs out.
CREATE TABLE IF NOT EXISTS refresh_state (
    id           TINYINT UNSIGNED PRIMARY KEY,
    last_refresh BIGINT UNSIGNED  NOT NULL DEFAULT 0,
    lock_owner   VARCHAR(128)     NOT NULL DEFAULT '',
    lock_until   BIGINT UNSIGNED  NOT NULL DEFAULT 0
) ENGINE=InnoDB;
INSERT IGNORE INTO refresh_state (id) VALUES (1);

-- Swarm totals at each refresh, for the stats page's chart.
CREATE TABLE IF NOT EXISTS history (
    sampled_at BIGINT UNSIGNED PRIMARY KEY,
    seeds      INT UNSIGNED    NOT NULL,
    leechers   INT UNSIGNED    NOT NULL
) ENGINE=InnoDB;

-- .torrent files the scanner refused, so each is reported once, not at every refresh.
CREATE TABLE IF NOT EXISTS skipped_files (
    path_hash  BINARY(20)      PRIMARY KEY,  -- SHA-1 of the path (paths are too long to key)
    path       VARCHAR(1024)   NOT NULL,
    file_size  BIGINT UNSIGNED NOT NULL,
    file_mtime BIGINT UNSIGNED NOT NULL,
    reason     VARCHAR(255)    NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- The schema's versions: one row for each version this database has been brought to (the
-- highest is its version now). A database made before versions were kept (0.1.0) is
-- recorded as version 1 when first migrated. Created last: a database with this table and
-- no row is one whose creation was cut short, and is finished by the next start.
CREATE TABLE IF NOT EXISTS schema_version (
    version     INT UNSIGNED    PRIMARY KEY,
    applied_at  BIGINT UNSIGNED NOT NULL,             -- unix time
    description VARCHAR(255)    NOT NULL DEFAULT ''   -- what the migration changed
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
