// A reactor workload in JavaScript, built with jco's QuickJS backend (`--backend qjs`):
// a component of under 2 MB that uses the component model's async ABI. It exports
// setpoint's `lifecycle`: `start` starts it, `health` is ready once it has started, and
// `stop` stops it. (A QuickJS component has no `console`: it is not defined there.)
//
//   jco componentize app.js --backend qjs --wit ../../wit/workload --world-name reactor -o hello_js.wasm

let started = false;

export const lifecycle = {
  start() {
    started = true;
  },
  health() {
    return started ? { tag: "ready" } : { tag: "not-ready", val: "not started" };
  },
  stop() {
    started = false;
  },
};
