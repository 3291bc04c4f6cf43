// Small DOM helpers shared by the other modules: elements, state badges, times, the message bar and
// the confirmation dialog.
//
// Every text from the API (names, journal details, errors, drift reasons) goes in as `textContent`
// through `element`, never as markup: nothing the API returns can inject HTML.

export const $ = (id) => document.getElementById(id);

export function element(tag, { text, cls, attrs } = {}, children = []) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

// `state state-<group> state-<state with dots as dashes>`: one colour per group, see style.css.
function stateClass(state) {
  return `state state-${state.split(".")[0]} state-${state.replaceAll(".", "-")}`;
}

export function badge(state) {
  return element("span", { text: state, cls: stateClass(state), attrs: { "data-testid": "state" } });
}

export function clock(iso) {
  if (!iso) return "";
  return element("time", { text: new Date(iso).toLocaleString(), attrs: { datetime: iso } });
}

export function short(id) {
  return id ? String(id).slice(0, 8) : "none";
}

export function showError(error) {
  $("error-text").textContent = error instanceof Error ? error.message : String(error);
  $("error").hidden = false;
}

export function clearError() {
  $("error").hidden = true;
  $("error-text").textContent = "";
}

// Ask in the modal dialog; resolves true for `verb`, false for Cancel or Escape.
export function confirmAction(text, verb) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-yes").textContent = verb;
  return new Promise((resolve) => {
    const done = (answer) => {
      $("confirm-yes").removeEventListener("click", yes);
      $("confirm-no").removeEventListener("click", no);
      dialog.removeEventListener("cancel", no);
      dialog.close();
      resolve(answer);
    };
    const yes = () => done(true);
    const no = () => done(false);
    $("confirm-yes").addEventListener("click", yes);
    $("confirm-no").addEventListener("click", no);
    dialog.addEventListener("cancel", no); // Escape
    dialog.showModal();
    $("confirm-no").focus();
  });
}
