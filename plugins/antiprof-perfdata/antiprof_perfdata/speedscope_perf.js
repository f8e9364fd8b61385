// speedscope's own `perf script` importer (the published 1.25.0 bundle), run under node.
// node speedscope_perf.js NODE_MODULES < perf-script.txt
// prints JSON {profiles: [{name, total, frames: {name: {total, self}}}]}: one profile per thread.
// The bundle is the browser app; its import function is reached by renaming the app's last
// statement (the render into document.body) into an export, with the few browser globals it
// touches while loading stubbed.
'use strict'
const fs = require('fs')
const path = require('path')

const release = path.join(process.argv[2], 'speedscope', 'dist', 'release')
const bundleName = fs.readdirSync(release).find((name) => /^speedscope-\w+\.js$/.test(name))
let source = fs.readFileSync(path.join(release, bundleName), 'utf8')
const importer = /async function (\w+)\(t,e\)\{return\(await \w+\)\.importProfileGroupFromText\(t,e\)\}/.exec(source)
const render = /console\.log\(`speedscope v\$\{\w+\(\)\.version\}`\);[^\n]*\}\)\(\);/
if (!importer || !render.test(source)) throw new Error(`${bundleName}: importer not found (speedscope changed?)`)
source = source.replace(render, `globalThis.speedscopeImportText=${importer[1]};})();`)

Object.assign(globalThis, {
  window: globalThis,
  location: { hash: '', protocol: 'file:', search: '', href: 'file:///speedscope' },
  localStorage: {},
  devicePixelRatio: 1,
  matchMedia: () => ({ matches: false, addEventListener() {}, addListener() {} }),
  addEventListener() {},
  requestAnimationFrame: (callback) => setTimeout(callback, 0),
  cancelAnimationFrame: (id) => clearTimeout(id),
})
const log = console.log
console.log = (...args) => console.error(...args) // the importer says what it detected: keep stdout JSON
new Function(source)()

async function main() {
  const text = fs.readFileSync(0, 'utf8')
  const group = await globalThis.speedscopeImportText('antiprof.linux-perf.txt', text)
  if (!group) throw new Error('speedscope could not import the perf script output')
  const profiles = group.profiles.map((profile) => {
    const frames = {}
    profile.forEachFrame((frame) => {
      const entry = frames[frame.name] || (frames[frame.name] = { total: 0, self: 0 })
      entry.total += frame.getTotalWeight()
      entry.self += frame.getSelfWeight()
    })
    return { name: profile.getName(), total: profile.getTotalWeight(), frames }
  })
  log(JSON.stringify({ profiles }))
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(String(error && error.stack ? error.stack : error))
    process.exit(1)
  },
)
