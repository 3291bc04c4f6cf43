// The zlh-actors dashboard: plain JavaScript modules, no framework, no build, nothing from another
// origin (docs/dashboard.md). This module wires the page: sign-in, sign-out and the buttons.
//
//   api.js      REST calls, their errors, the paged journal
//   stream.js   the WebSocket stream, reconnecting with ?since=
//   session.js  one signed-in session: live state, journal, admin panels
//   render.js   rows, timeline, shard map, drift report, from API data
//   dom.js      elements, badges, the message bar, the confirmation dialog
//
// The token is kept in sessionStorage (this tab only) and forgotten at sign-out, which also happens
// by itself when the API or the stream refuses the token.

import { clearError, showError, $ } from "./dom.js";
import { Session } from "./session.js";

const TOKEN_KEY = "zlh-token";

let session = null;

function showSignedIn(signedIn) {
  $("signin-panel").hidden = signedIn;
  $("app").hidden = !signedIn;
  $("session").hidden = !signedIn;
}

async function signIn(token) {
  clearError();
  const current = new Session(token, {
    onRefused: (error) => {
      if (session !== current) return;
      signOut();
      showError(error);
    },
  });
  session = current;
  try {
    await current.start();
  } catch (error) {
    if (session === current) showError(error); // a refusal has signed out already and said why
  }
}

function signOut() {
  if (session) session.stop();
  session = null;
  sessionStorage.removeItem(TOKEN_KEY);
  for (const id of ["servers-body", "timeline", "shards-body", "replicas-body", "drift"]) $(id).replaceChildren();
  $("no-servers").hidden = false;
  $("timeline-panel").hidden = true;
  $("admin").hidden = true;
  $("who").textContent = "";
  showSignedIn(false);
}

function guarded(work) {
  return async (event) => {
    if (event) event.preventDefault();
    try {
      await work(event);
    } catch (error) {
      showError(error);
    }
  };
}

function main() {
  $("signin-form").addEventListener(
    "submit",
    guarded(async () => {
      const token = $("token").value.trim();
      $("token").value = "";
      sessionStorage.setItem(TOKEN_KEY, token);
      showSignedIn(true);
      await signIn(token);
    }),
  );
  $("sign-out").addEventListener("click", () => {
    signOut();
    clearError();
  });
  $("error-dismiss").addEventListener("click", clearError);
  $("create-form").addEventListener(
    "submit",
    guarded(async () => {
      const button = $("create-submit");
      button.disabled = true;
      try {
        await session.create();
      } finally {
        button.disabled = false;
      }
    }),
  );
  $("timeline-close").addEventListener("click", () => session && session.unselect());
  $("shards-refresh").addEventListener("click", guarded(() => session.loadShards()));
  $("drift-refresh").addEventListener("click", guarded(() => session.loadDrift()));
  $("reconcile").addEventListener("click", guarded(() => session.reconcile()));

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    showSignedIn(true);
    signIn(saved);
  } else {
    showSignedIn(false);
  }
}

main();
