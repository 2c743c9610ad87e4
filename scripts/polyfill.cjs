// Preloaded into js-ipfs (NODE_OPTIONS=--require <abs path>/polyfill.cjs):
// Node 20 lacks Promise.withResolvers (added in Node 22), which a transitive
// dependency of js-ipfs 0.66.1 calls.
'use strict'
if (typeof Promise.withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    value: function withResolvers () {
      let resolve, reject
      const promise = new this((res, rej) => { resolve = res; reject = rej })
      return { promise, resolve, reject }
    }
  })
}
