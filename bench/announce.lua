-- wrk script: realistic announce/scrape traffic for tracker_wsgi.
--
--   wrk -t2 -c64 -d10s --latency -s bench/announce.lua http://127.0.0.1:PORT/tracker -- [torrents] [peers_per_thread] [zipf_s] [first_thread]
--
-- The URL's path is where the tracker lives: requests go to <path>/announce and <path>/scrape
-- (/tracker for tracker_wsgi, / for opentracker and the npm bittorrent-tracker).
-- Torrents: info hash i = sha1("bench-torrent-<i>"), i = 0..torrents-1 (bench/run.py registers
-- the same ones). Popularity is Zipf-like: torrent i is chosen with weight 1/(i+1)^s.
-- Peers: each wrk thread keeps a pool of peer slots; a slot is a peer (20-byte peer_id, key,
-- port, a torrent by popularity, seed with probability 1/3 so left=0). Slots start as
-- deterministic peers that bench/run.py has already put in the store (see slot_peer), so the
-- swarms are in steady state. A request picks a slot at random: ~5% of requests are
-- event=stopped (the slot becomes a new peer with a random peer_id, whose next announce is
-- event=started, so ~5% started too), the rest regular re-announces; ~10% of requests are
-- scrapes of one torrent. compact=1, numwant=50.
-- Addresses: every peer announces from its own IPv4 address, sent as X-Forwarded-For the way a
-- reverse proxy passes it on (bench/run.py makes the tracker trust 127.0.0.1 as its proxy), so
-- the tracker's per-address limits see many clients, as on the internet, not one.
-- Errors: any non-200 answer, and any 200 whose body holds "failure reason" (bencoded error),
-- are counted per thread and printed by done(), with each thread's first such answer (which
-- rule refused it).
-- first_thread (default 1): wrk's threads are numbered from it, so several wrk processes
-- (bench/run.py --cluster: one per front end) each send peers of their own.

local bit = require("bit")
local band, bor, bxor, bnot, rol, tobit, tohex = bit.band, bit.bor, bit.bxor, bit.bnot, bit.rol, bit.tobit, bit.tohex

-- SHA-1 (LuaJIT bit ops), for deterministic info hashes shared with bench/run.py.
local function sha1(msg)
   local h0, h1, h2, h3, h4 = tobit(0x67452301), tobit(0xEFCDAB89), tobit(0x98BADCFE), tobit(0x10325476), tobit(0xC3D2E1F0)
   local bits = #msg * 8
   msg = msg .. "\128" .. string.rep("\0", (55 - #msg) % 64)
      .. string.char(0, 0, 0, 0, band(bit.rshift(bits, 24), 255), band(bit.rshift(bits, 16), 255),
                     band(bit.rshift(bits, 8), 255), band(bits, 255))
   local w = {}
   for chunk = 1, #msg, 64 do
      for i = 0, 15 do
         local a, b, c, d = msg:byte(chunk + i * 4, chunk + i * 4 + 3)
         w[i] = bor(bit.lshift(a, 24), bit.lshift(b, 16), bit.lshift(c, 8), d)
      end
      for i = 16, 79 do
         w[i] = rol(bxor(w[i - 3], w[i - 8], w[i - 14], w[i - 16]), 1)
      end
      local a, b, c, d, e = h0, h1, h2, h3, h4
      for i = 0, 79 do
         local f, k
         if i < 20 then
            f, k = bor(band(b, c), band(bnot(b), d)), 0x5A827999
         elseif i < 40 then
            f, k = bxor(b, c, d), 0x6ED9EBA1
         elseif i < 60 then
            f, k = bor(band(b, c), band(b, d), band(c, d)), 0x8F1BBCDC
         else
            f, k = bxor(b, c, d), 0xCA62C1D6
         end
         local temp = tobit(rol(a, 5) + f + e + k + w[i])
         e, d, c, b, a = d, c, rol(b, 30), a, temp
      end
      h0, h1, h2, h3, h4 = tobit(h0 + a), tobit(h1 + b), tobit(h2 + c), tobit(h3 + d), tobit(h4 + e)
   end
   local hex = tohex(h0, 8) .. tohex(h1, 8) .. tohex(h2, 8) .. tohex(h3, 8) .. tohex(h4, 8)
   return (hex:gsub("..", function(x) return string.char(tonumber(x, 16)) end))
end

-- Percent-encode bytes as clients do: unreserved characters literal, the rest %XX.
local function urlencode(s)
   return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

local function random_bytes(n)
   local t = {}
   for i = 1, n do t[i] = string.char(math.random(0, 255)) end
   return table.concat(t)
end

-- Shared config (set in every thread's Lua state by init).
local torrents, pool_size, zipf_s, first_thread = 1000, 5000, 1.0, 1
local hashes = {}   -- encoded info hashes, 1-based
local cdf = {}      -- cumulative popularity
local slots = {}    -- peer pool of this thread
local pending = {}  -- slots whose peer stopped and will announce `started` next
local base = ""     -- the URL's path without its trailing slash: "/tracker", or "" for "/"
-- Globals, not locals: done() reads them from each thread with thread:get().
errors, non200, failures, announces, scrapes, started, stopped = 0, 0, 0, 0, 0, 0, 0
first_error = nil  -- "<status> <body's start>" of this thread's first error

-- Torrent index (1-based) for u in [0, 1): first i with cdf[i] >= u * cdf[N].
local function pick_torrent(u)
   local target = (u or math.random()) * cdf[#cdf]
   local lo, hi = 1, #cdf
   while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if cdf[mid] < target then lo = mid + 1 else hi = mid end
   end
   return lo
end

-- Peer slot j of thread t starts as a deterministic peer derived from
-- h = sha1("bench-peer-<t>-<j>"), so bench/run.py can put the same peers in the store
-- beforehand (the swarms are then in steady state, not all first announces):
--   peer_id = "-BN0001-" .. h[1..12]   port = 1024 + (h[13]*256 + h[14]) % 64000
--   seed when h[15] % 3 == 0 (left=0), else left = (h[20] + 1) * 262144
--   torrent = pick_torrent(h[16..19] as big-endian uint32 / 2^32)   key = hex(h[1..4])
--   address = 10.<t>.<j div 256>.<j mod 256> (one per slot while t < 256 and j < 65536)
local function slot_peer(t, j)
   local h = sha1("bench-peer-" .. t .. "-" .. j)
   local b = { h:byte(1, 20) }
   local u = (b[16] * 16777216 + b[17] * 65536 + b[18] * 256 + b[19]) / 4294967296
   return {
      peer_id = urlencode("-BN0001-" .. h:sub(1, 12)),
      key = string.format("%02X%02X%02X%02X", b[1], b[2], b[3], b[4]),
      port = 1024 + (b[13] * 256 + b[14]) % 64000,
      torrent = pick_torrent(u),
      left = (b[15] % 3 == 0) and 0 or (b[20] + 1) * 262144,
      address = string.format("10.%d.%d.%d", t, math.floor(j / 256), j % 256),
      uploaded = 0,
      fresh = false,
   }
end

-- A client that stopped and comes back: a new random peer_id and address (a random one in
-- 10.0.0.0/8: it may meet a slot's address, and a few peers sharing one is what NAT does
-- anyway), same torrent and role.
local function restarted_peer(old)
   return {
      peer_id = urlencode("-BN0001-" .. random_bytes(12)),
      key = string.format("%08X", math.random(0, 0x7fffffff)),
      port = math.random(1024, 65535),
      torrent = old.torrent,
      left = old.left,
      address = string.format("10.%d.%d.%d", math.random(0, 255), math.random(0, 255), math.random(0, 255)),
      uploaded = 0,
      fresh = true,
   }
end

-- Main-thread bookkeeping: every thread, so done() can sum their counters.
local threads = {}
local thread_count = 0

function setup(thread)
   thread_count = thread_count + 1
   thread:set("thread_number", thread_count)
   table.insert(threads, thread)
end

function init(args)
   torrents = tonumber(args[1]) or torrents
   pool_size = tonumber(args[2]) or pool_size
   zipf_s = tonumber(args[3]) or zipf_s
   first_thread = tonumber(args[4]) or first_thread
   thread_id = first_thread + (thread_number or 1) - 1
   base = (wrk.path:gsub("/+$", ""))
   local total = 0
   for i = 1, torrents do
      hashes[i] = urlencode(sha1("bench-torrent-" .. (i - 1)))
      total = total + 1 / (i ^ zipf_s)
      cdf[i] = total
   end
   for j = 1, pool_size do
      slots[j] = slot_peer(thread_id, j)
   end
   math.randomseed(os.time() * 1000 + thread_id * 7919 + math.floor(os.clock() * 1e6))
   if args[5] == "selftest" and thread_number == 1 then
      -- run.py checks this against Python's hashlib and the tracker's view of a request.
      io.write("SELFTEST sha1(bench-torrent-0)=", (sha1("bench-torrent-0"):gsub(".", function(c)
         return string.format("%02x", c:byte()) end)), " hash[1]=", hashes[1],
         " slot1=", slots[1].peer_id, ",", slots[1].port, ",", slots[1].torrent, ",", slots[1].left, ",", slots[1].key,
         ",", slots[1].address, "\n")
   end
end

function request()
   local r = math.random()
   -- wrk.format's headers argument would replace wrk.headers (and `-H "Connection: close"` in
   -- them), so each request sets its address in this thread's own wrk.headers instead.
   local headers = wrk.headers
   if r < 0.10 then
      scrapes = scrapes + 1
      headers["X-Forwarded-For"] = slots[math.random(1, pool_size)].address  -- a client scrapes from its own
      return wrk.format("GET", base .. "/scrape?info_hash=" .. hashes[pick_torrent()])
   end
   announces = announces + 1
   -- A peer that stopped comes back at once (event=started), so started ~ stopped ~ 5%.
   local slot = (#pending > 0 and r >= 0.15) and table.remove(pending) or math.random(1, pool_size)
   local p = slots[slot]
   local event = ""
   if p.fresh then
      event = "&event=started"
      started = started + 1
      p.fresh = false
   elseif r < 0.10 + 0.05 then
      event = "&event=stopped"
      stopped = stopped + 1
      slots[slot] = restarted_peer(p)
      table.insert(pending, slot)
   else
      p.uploaded = p.uploaded + math.random(0, 16) * 16384
   end
   local path = base .. "/announce?info_hash=" .. hashes[p.torrent]
      .. "&peer_id=" .. p.peer_id .. "&port=" .. p.port
      .. "&uploaded=" .. p.uploaded .. "&downloaded=0&left=" .. p.left
      .. "&corrupt=0&key=" .. p.key .. event .. "&numwant=50&compact=1&no_peer_id=1"
   headers["X-Forwarded-For"] = p.address  -- p's: a stopped slot still speaks as the peer that stops
   return wrk.format("GET", path)
end

function response(status, headers, body)
   if status ~= 200 then
      non200 = non200 + 1
   elseif body and body:find("failure reason", 1, true) then
      failures = failures + 1
   else
      return
   end
   errors = errors + 1
   if not first_error then
      first_error = status .. " " .. (body or ""):sub(1, 120):gsub("%c", " ")
   end
end

function done(summary, latency, requests)
   local e, n, f, a, s, st, sp = 0, 0, 0, 0, 0, 0, 0
   for _, thread in ipairs(threads) do
      e = e + (thread:get("errors") or 0)
      n = n + (thread:get("non200") or 0)
      f = f + (thread:get("failures") or 0)
      a = a + (thread:get("announces") or 0)
      s = s + (thread:get("scrapes") or 0)
      st = st + (thread:get("started") or 0)
      sp = sp + (thread:get("stopped") or 0)
   end
   io.write(string.format("BENCH errors=%d non200=%d failure_reason=%d announces_sent=%d scrapes_sent=%d started=%d stopped=%d\n",
      e, n, f, a, s, st, sp))
   for _, thread in ipairs(threads) do
      local first = thread:get("first_error")
      if first then io.write("BENCH first_error ", first, "\n") end
   end
end

