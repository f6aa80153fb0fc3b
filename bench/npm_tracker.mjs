// The npm bittorrent-tracker as bench/run.py measures it: HTTP only (no UDP, no WebSocket),
// peers in memory, the peer's address from X-Forwarded-For (wrk plays the reverse proxy, as
// for tracker_wsgi), and only the whitelisted info hashes, as opentracker and tracker_wsgi
// serve only registered torrents.
//
//   node bench/npm_tracker.mjs <node_modules dir> <port> <whitelist: one hex info hash a line>
//
// Imported from server.js: the package's entry also loads the WebRTC module, which
// `npm install --ignore-scripts` leaves unbuilt.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

const [modules, port, whitelist] = process.argv.slice(2)
const { default: Server } = await import(pathToFileURL(join(modules, 'bittorrent-tracker', 'server.js')).href)
const allowed = new Set(readFileSync(whitelist, 'utf8').split(/\s+/).filter(Boolean))

const server = new Server({
  http: true,
  udp: false,
  ws: false,
  stats: false,
  trustProxy: true,
  filter: (infoHash, params, cb) => cb(allowed.has(infoHash) ? null : new Error('unregistered torrent'))
})
server.on('error', err => {
  console.error(`npm tracker: ${err.message}`)
  process.exit(1)
})
server.listen(Number(port), '127.0.0.1', () => console.log(`npm tracker: listening on 127.0.0.1:${port}`))
