-- tracker_wsgi schema for MySQL / MariaDB (InnoDB).
--
-- The tracker runs these statements itself at start-up and from `tracker-wsgi init-db`;
-- every one is CREATE TABLE IF NOT EXISTS, so running them again is harmless. To create
-- the tables by hand instead:  mysql tracker < schema.sql
--
-- Differences from BitTorrent::TrackerCGI's bt_* tables, and why:
--  * hashes and peer ids are BINARY(20), not CHAR(20) BINARY (MySQL stripped trailing
--    spaces from CHAR, so every read had to re-pad with RPAD);
--  * peers are keyed by (torrent, peer_id), not by peer_id alone: peer ids are not unique
--    across torrents, and one client seeds many torrents with one id;
--  * everything is InnoDB: MEMORY tables lost every peer and counter on a server restart;
--  * swarm counts are read from the peers themselves, so they cannot drift or go negative.

-- One row per torrent (swarm).
CREATE TABLE IF NOT EXISTS torrents (
    id          INT UNSIGNED    NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name        VARCHAR(255)    NOT NULL DEFAULT '',
    size        BIGINT UNSIGNED NOT NULL DEFAULT 0,   -- bytes of content
    path        VARCHAR(1024)   NOT NULL DEFAULT '',  -- .torrent file, relative to the torrent directory
    added       BIGINT UNSIGNED NOT NULL,             -- unix time of registration
    downloaded  INT UNSIGNED    NOT NULL DEFAULT 0,   -- completions counted, once per peer
    transferred BIGINT UNSIGNED NOT NULL DEFAULT 0    -- bytes uploaded by peers that have left
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
    state      TINYINT UNSIGNED  NOT NULL,  -- 0 leecher, 1 seed, 2 partial seed (BEP 21)
    bytes_left BIGINT UNSIGNED   NOT NULL,
    uploaded   BIGINT UNSIGNED   NOT NULL,
    downloaded BIGINT UNSIGNED   NOT NULL,
    completed  TINYINT UNSIGNED  NOT NULL DEFAULT 0,  -- this peer's completion was counted
    last_seen  BIGINT UNSIGNED   NOT NULL,  -- unix time of the last announce
    PRIMARY KEY (torrent_id, peer_id),
    KEY by_state (torrent_id, state),
    KEY by_last_seen (last_seen)
) ENGINE=InnoDB;
