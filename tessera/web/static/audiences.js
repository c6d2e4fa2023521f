// The audience builder and the computed-trait form: Alpine islands (the CSP build, so the
// markup only reads properties and calls methods; everything else is here). The definition
// itself is static/condition_tree.js's tree; this draws it as one flat list of rows with a
// depth, which keeps every control in plain tab order, and edits it.
"use strict";

(function () {
  const {
    VALUELESS, DATE_OPS, NUMERIC_KINDS, TIME_KINDS,
    blank, group, importRoot, exportRoot, pretty, jsonProblem,
  } = window.TesseraConditionTree;
  const OP_LABELS = {
    eq: "is", neq: "is not", lt: "is less than", lte: "is at most", gt: "is more than",
    gte: "is at least", contains: "contains", starts_with: "starts with", in: "is one of",
    exists: "is set", is_empty: "is empty or missing", before: "is before", after: "is after",
    within_last_days: "is within the last",
  };
  const COUNT_LABELS = {
    gte: "at least", gt: "more than", eq: "exactly", neq: "other than", lte: "at most", lt: "fewer than",
  };
  const TIME_LABELS = {
    before: "before", after: "after", within_last_days: "within the last", lt: "before",
    lte: "on or before", gt: "after", gte: "on or after", exists: "at any time", is_empty: "never",
  };
  const KINDS = [
    ["trait", "Trait"], ["computed", "Computed trait"], ["event", "Event"],
    ["audience", "Audience"], ["consent", "Consent"],
  ];
  const MEASURES = [
    ["performed", "performed"], ["not_performed", "did not perform"], ["count", "performed … times"],
    ["first_time", "first performed"], ["last_time", "last performed"],
  ];
  const VALUE_TYPES = [["text", "Text"], ["number", "Number"], ["bool", "True / false"], ["json", "JSON"]];
  const WINDOWS = [["", "ever"], ["days", "in the last … days"], ["hours", "in the last … hours"]];
  const GROUP_MODES = [["and", "all"], ["or", "any"], ["not-and", "not all"], ["not-or", "none"]];

  // ---------- the tree as rows ----------

  function options(pairs, current) {
    return pairs.map(([value, label]) => ({ value, label, selected: value === current }));
  }

  function opOptions(ops, current, labels) {
    const list = ops.includes(current) || !current ? ops : [current, ...ops];
    return list.map((op) => ({ value: op, label: (labels || OP_LABELS)[op] || op, selected: op === current }));
  }

  function valueMode(op, vtype) {
    if (VALUELESS.includes(op)) return "none";
    if (op === "within_last_days") return "days";
    if (DATE_OPS.includes(op)) return "date";
    if (vtype === "bool") return "bool";
    return "text";
  }

  // The field a server error's path names, relative to its condition's path.
  function badFields(rest) {
    const bad = { name: false, op: false, value: false, count: false, window: false, measure: false, json: false, group: false };
    const parts = rest.split(/[.[]/).filter(Boolean);
    const [first, second] = parts;
    if (!first) bad.measure = true;
    else if (["trait", "computed", "property", "event", "audience", "consent"].includes(first)) bad.name = true;
    else if (first === "op") bad.op = true;
    else if (first === "value") bad.value = true;
    else if (first === "count") bad[second === "op" ? "count" : "value"] = true;
    else if (TIME_KINDS.includes(first)) bad[second === "op" ? "op" : "value"] = true;
    else if (first === "window") bad.window = true;
    else if (first === "and" || first === "or") bad.group = true;
    else bad.measure = true;
    return bad;
  }

  const noBad = () => ({ name: false, op: false, value: false, count: false, window: false, measure: false, group: false });

  function labels(name) {
    return {
      kind: `${name}: kind of condition`,
      name: `${name}: name`,
      event: `${name}: event name`,
      measure: `${name}: performed how`,
      count: `${name}: how many times`,
      times: `${name}: number of times`,
      window: `${name}: time window`,
      amount: `${name}: length of the window`,
      op: `${name}: comparison`,
      value: `${name}: value`,
      vtype: `${name}: value type`,
      not: `${name}: not (match people for whom it is false)`,
      remove: `Remove ${name.charAt(0).toLowerCase()}${name.slice(1)}`,
      mode: `${name}: match all, any, not all or none`,
      addFilter: `${name}: add a property filter`,
      raw: `${name}: as JSON`,
    };
  }

  class Flattener {
    constructor(editor) {
      this.editor = editor;
      this.rows = [];
      this.conditions = 0;
      this.groups = 0;
    }

    group(node, outer, depth, scope, parent, index, owner) {
      const inner = outer + ".not".repeat(node.not);
      const root = parent === null;
      const single = node.bare && node.not === 0 && node.children.length === 1;
      const filterRoot = root && scope === "filter";
      const number = root ? 0 : ++this.groups;
      let name = `Group ${number}`;
      if (root) name = filterRoot ? `${owner.name} filters` : "All conditions";
      else if (scope === "filter") name = `${owner.name}, filter group ${number}`;
      const showHeader = !root || node.children.length > 1 || node.not > 0 || !node.bare;
      if (showHeader) {
        const mode = (node.not % 2 ? "not-" : "") + node.op;
        this.rows.push({
          key: `${node.id}:group`, kind: "group", isGroupRow: true, node, parent, index, depth, scope,
          inner, outer, name, rowId: node.id, removable: !root,
          connector: parent && index > 0 ? parent.op : "",
          modes: options(GROUP_MODES, mode),
          lead: root ? (scope === "filter" ? "Where" : "People who match") : "Match",
          tail: scope === "filter" ? "of these properties" : "of these conditions",
          l: labels(name), error: "", bad: noBad(),
        });
      }
      const childDepth = showHeader ? depth + 1 : depth;
      node.children.forEach((child, i) => {
        const childOuter = single ? inner : `${inner}.${node.op}[${i}]`;
        if (child.type === "group") this.group(child, childOuter, childDepth, scope, node, i, owner);
        else this.leaf(child, childOuter, childDepth, scope, node, i, owner);
      });
      if (!filterRoot) {
        const filter = scope === "filter";
        this.rows.push({
          key: `${node.id}:add`, kind: "add", isAddRow: true, node, depth: childDepth, scope, inner,
          outer, name, rowId: "", addId: node.id, first: root && node.children.length === 0,
          empty: !root && node.children.length === 0,
          addLabel: filter ? "Property filter" : (root && node.children.length === 0 ? "Add a condition" : "Condition"),
          addGroupLabel: filter ? "Filter group" : "Group",
          addAria: `${name}: add a ${filter ? "property filter" : "condition"}`,
          addGroupAria: `${name}: add a group of ${filter ? "filters" : "conditions"}`,
          error: "", bad: noBad(),
        });
      }
    }

    leaf(node, outer, depth, scope, parent, index, owner) {
      const inner = outer + ".not".repeat(node.not);
      const number = ++this.conditions;
      const name = scope === "filter" ? `${owner.name}, filter ${number - owner.number}` : `Condition ${number}`;
      const editor = this.editor;
      const type = node.type;
      const row = {
        key: `${node.id}:leaf`, kind: "condition", isCondition: true, node, parent, index, depth, scope,
        inner, outer, name, number, rowId: node.id,
        connector: index > 0 ? parent.op : "",
        negated: node.not % 2 === 1,
        isTrait: type === "trait", isComputed: type === "computed", isEvent: type === "event",
        isAudience: type === "audience", isConsent: type === "consent", isProperty: type === "property",
        isRaw: type === "raw", hasKind: scope !== "filter" && type !== "raw",
        kinds: options(KINDS, type),
        valueTypes: options(VALUE_TYPES, node.vtype),
        l: labels(name), error: "", bad: noBad(),
      };
      if (row.isTrait || row.isProperty) {
        row.ops = opOptions(scope === "filter" ? editor.operators.filter : editor.operators.trait, node.op);
        row.event = owner.event || "";
        row.nameList = row.isTrait ? "trait-names" : editor.propertyListId(row.event);
        row.namePlaceholder = row.isTrait ? "trait, e.g. plan" : "property, e.g. total";
        row.nameHint = row.isTrait ? editor.traitType(node.trait) : editor.propertyType(row.event, node.property);
      }
      if (row.isComputed) {
        const kind = editor.computedKind(node.computed);
        row.nameHint = kind ? kind.replace("_", " ") : "";
        row.ops = opOptions(kind && editor.operators.kinds[kind] ? editor.operators.kinds[kind] : editor.operators.trait, node.op);
        row.computedOptions = editor.computedOptions(node.computed);
      }
      if (row.isAudience) row.audienceOptions = editor.audienceOptions(node.audience);
      if (row.isEvent) {
        row.measures = options(MEASURES, node.measure);
        row.countOps = opOptions(editor.operators.count, node.countOp, COUNT_LABELS);
        row.timeOps = opOptions(editor.operators.time, node.op, TIME_LABELS);
        row.isCount = node.measure === "count";
        row.isTime = TIME_KINDS.includes(node.measure);
        row.hasWindow = !row.isTime;
        row.windows = options(WINDOWS, node.windowUnit);
        row.windowAmount = Boolean(node.windowUnit) && row.hasWindow;
        row.windowUnitLabel = node.windowUnit === "hours" ? "hours" : "days";
        row.times = node.countText === "1" ? "time" : "times";
        row.whereId = node.where.id;
      }
      if (row.isTrait || row.isComputed || row.isProperty || (row.isEvent && row.isTime)) {
        const mode = valueMode(node.op, node.vtype);
        row.showValue = mode === "text";
        row.showDate = mode === "date";
        row.showDays = mode === "days";
        row.showBool = mode === "bool";
        row.showType = (mode === "text" || mode === "bool") && !row.isComputed;
        row.boolOptions = options([["true", "true"], ["false", "false"]], node.text);
        row.placeholder = node.op === "in" ? "values, separated by commas" : "value";
      }
      this.rows.push(row);
      if (row.isEvent) {
        const filters = { name, number, event: node.event };
        this.group(node.where, `${inner}.where`, depth + 1, "filter", null, 0, filters);
        this.conditions = number; // filters are numbered within their event
      }
    }
  }

  function finish(rows, error) {
    attachError(rows, error);
    for (const row of rows) {
      const scope = row.scope === "filter" ? " in-filter" : "";
      row.css = `brow brow-${row.kind} depth-${Math.min(row.depth, 16)}${scope}${row.error ? " has-error" : ""}${row.negated ? " negated" : ""}`;
      row.describedBy = row.error ? `error-${row.node.id}` : null;
      row.errorId = `error-${row.node.id}`;
    }
    return rows;
  }

  function attachError(rows, error) {
    if (!error || !error.path || error.path === "json") return;
    let best = null;
    for (const row of rows) {
      if (row.kind === "add") continue;
      const inner = row.inner;
      const path = error.path;
      const fits = path === inner || (path.startsWith(inner) && (path[inner.length] === "." || path[inner.length] === "["));
      if (fits && (!best || inner.length >= best.inner.length)) best = row;
    }
    if (!best) return;
    best.error = error.message;
    best.bad = badFields(error.path.slice(best.inner.length));
  }

  // ---------- the editor both islands share ----------

  // Object.assign would call the getters once and copy their values; keep them getters.
  function extend(base, extra) {
    return Object.defineProperties(base, Object.getOwnPropertyDescriptors(extra));
  }

  function treeEditor(data) {
    return {
      catalogue: data.catalogue || { events: [], traits: [], computed: [], audiences: [], consent: [] },
      operators: data.operators,
      properties: {},
      serverError: data.error || null,

      computedKind(name) {
        const found = this.catalogue.computed.find((trait) => trait.name === name);
        return found ? found.kind : "";
      },
      computedOptions(current) {
        const list = this.catalogue.computed.map((trait) => ({ value: trait.name, label: trait.name, selected: trait.name === current }));
        if (current && !list.some((item) => item.selected)) list.unshift({ value: current, label: `${current} (unknown)`, selected: true });
        if (!current) list.unshift({ value: "", label: "Choose a computed trait", selected: true });
        return list;
      },
      audienceOptions(current) {
        const list = this.catalogue.audiences.map((audience) => ({ value: audience.id, label: audience.name, selected: audience.id === current }));
        if (current && !list.some((item) => item.selected)) list.unshift({ value: current, label: `${current} (unknown)`, selected: true });
        if (!current) list.unshift({ value: "", label: "Choose an audience", selected: true });
        return list;
      },
      // The properties seen on an event, fetched once per event the catalogue knows (a
      // name being typed is not fetched letter by letter).
      propertyListId(event) {
        const key = this.propertyKey(event);
        if (!key) return "property-names";
        this.loadProperties(key);
        return this.properties[key] && this.properties[key].length ? `properties-${this.slug(key)}` : "property-names";
      },
      propertyKey(event) {
        const type = this.eventType || "track";
        if (type !== "track") return ["page", "screen", "identify", "group"].includes(type) ? `${type}:` : "";
        return event && this.catalogue.events.some((known) => known.name === event) ? `track:${event}` : "";
      },
      propertyType(event, name) {
        const found = (this.properties[this.propertyKey(event)] || []).find((item) => item.name === name);
        return found && found.type ? found.type : "";
      },
      // A name picked from the suggestions sets the value's type from what Tessera has seen,
      // while no value is typed yet.
      nameChosen(row) {
        const node = row.node;
        const seen = row.isTrait ? this.traitType(node.trait) : this.propertyType(row.event, node.property);
        if (node.text !== "" || !seen || VALUELESS.includes(node.op)) return;
        if (seen === "integer" || seen === "number") node.vtype = "number";
        else if (seen === "boolean") Object.assign(node, { vtype: "bool", text: "true" });
        else if (seen === "string") node.vtype = "text";
      },
      slug(text) {
        return text.toLowerCase().replace(/[^a-z0-9]+/g, "-");
      },
      get propertyLists() {
        return Object.keys(this.properties).filter((event) => this.properties[event].length)
          .map((event) => ({ id: `properties-${this.slug(event)}`, items: this.properties[event] }));
      },
      loadProperties(key) {
        if (!this.propertiesUrl || key in this.properties) return;
        this.properties[key] = [];
        const [type, ...rest] = key.split(":");
        const query = new URLSearchParams({ type, event: rest.join(":") });
        fetch(`${this.propertiesUrl}?${query}`, { headers: { Accept: "application/json" } })
          .then((response) => (response.ok ? response.json() : { properties: [] }))
          .then((body) => { this.properties[key] = body.properties || []; })
          .catch(() => {});
      },

      // --- editing ---
      focusRow(id) {
        const root = this.$root;
        this.$nextTick(() => {
          const row = root.querySelector(`[data-row="${id}"]`);
          const control = row && (row.querySelector("[data-first]") || row.querySelector("select, input, textarea, button"));
          if (control) control.focus();
        });
      },
      addCondition(row) {
        const node = blank(row.scope === "filter" ? "property" : "trait");
        row.node.children.push(node);
        this.focusRow(node.id);
      },
      addKind(row, kind) {
        const node = blank(kind);
        row.node.children.push(node);
        this.focusRow(node.id);
      },
      addGroup(row) {
        const node = group(row.node.op === "and" ? "or" : "and", [blank(row.scope === "filter" ? "property" : "trait")], false);
        row.node.children.push(node);
        this.focusRow(node.id);
      },
      addFilter(row) {
        const node = blank("property");
        row.node.where.children.push(node);
        this.focusRow(node.id);
      },
      remove(row) {
        // The island's root, read now: the button that asked is gone once the row is.
        const root = this.$root;
        const siblings = row.parent.children;
        const at = siblings.indexOf(row.node);
        if (at >= 0) siblings.splice(at, 1);
        this.$nextTick(() => {
          const next = siblings[at] || siblings[at - 1];
          const rowOf = next && root.querySelector(`[data-row="${next.id}"]`);
          const target = rowOf
            ? rowOf.querySelector("[data-first]") || rowOf.querySelector("select, input, button")
            : root.querySelector(`[data-add="${row.parent.id}"]`);
          if (target) target.focus();
        });
      },
      toggleNot(row) {
        row.node.not = row.node.not % 2 ? row.node.not - 1 : row.node.not + 1;
      },
      setGroupMode(row, event) {
        const value = event.target.value;
        const negated = value.startsWith("not-");
        const node = row.node;
        node.op = negated ? value.slice(4) : value;
        if (negated !== (node.not % 2 === 1)) node.not += negated ? 1 : -1;
      },
      setKind(row, event) {
        const fresh = blank(event.target.value);
        const keep = { id: row.node.id, not: row.node.not };
        for (const key of Object.keys(row.node)) delete row.node[key];
        Object.assign(row.node, fresh, keep);
      },
      setOp(row, event) {
        const op = event.target.value;
        const node = row.node;
        const was = node.op;
        node.op = op;
        if (op === "within_last_days") {
          node.vtype = "number";
          if (was !== op) node.text = "30";
        } else if (DATE_OPS.includes(op) || (row.isEvent && TIME_KINDS.includes(node.measure) && ["lt", "lte", "gt", "gte"].includes(op))) {
          node.vtype = "text";
          if (was === "within_last_days") node.text = "";
        } else if (row.isComputed && NUMERIC_KINDS.includes(this.computedKind(node.computed))) {
          node.vtype = "number";
        }
      },
      setCountOp(row, event) { row.node.countOp = event.target.value; },
      setMeasure(row, event) {
        const node = row.node;
        const was = node.measure;
        node.measure = event.target.value;
        if (TIME_KINDS.includes(node.measure) && !TIME_KINDS.includes(was)) {
          Object.assign(node, { op: "within_last_days", text: "30", vtype: "number" });
        }
      },
      setWindow(row, event) { row.node.windowUnit = event.target.value; },
      setValueType(row, event) {
        const vtype = event.target.value;
        if (vtype === "bool" && !["true", "false"].includes(row.node.text)) row.node.text = "true";
        row.node.vtype = vtype;
      },
      setBool(row, event) { row.node.text = event.target.value; },
      setComputed(row, event) {
        row.node.computed = event.target.value;
        const kind = this.computedKind(row.node.computed);
        const allowed = this.operators.kinds[kind];
        if (allowed && !allowed.includes(row.node.op)) row.node.op = allowed[0];
        if (NUMERIC_KINDS.includes(kind)) row.node.vtype = "number";
        else if (TIME_KINDS.includes(kind)) row.node.vtype = row.node.op === "within_last_days" ? "number" : "text";
        else if (kind === "unique_list") row.node.vtype = "text";
      },
      setAudience(row, event) { row.node.audience = event.target.value; },
      setRaw(row, event) {
        row.node.text = event.target.value;
        try {
          row.node.value = JSON.parse(row.node.text);
          row.node.invalid = "";
        } catch (error) {
          row.node.invalid = jsonProblem(row.node.text, error);
        }
      },
      flatten(root, scope, owner) {
        const flattener = new Flattener(this);
        flattener.group(root, "$", 0, scope, null, 0, owner || { name: "", number: 0, event: "" });
        return finish(flattener.rows, this.serverError);
      },
      traitType(name) {
        const found = this.catalogue.traits.find((trait) => trait.name === name);
        return found && found.type ? found.type : "";
      },
    };
  }

  // ---------- the audience builder ----------

  function audienceBuilder() {
    const source = document.getElementById("audience-builder-data");
    const data = JSON.parse(source ? source.textContent : "{}");
    const editor = treeEditor(data);
    return extend(editor, {
      root: importRoot(data.definition, "audience"),
      propertiesUrl: data.propertiesUrl,
      previewUrl: data.previewUrl,
      tab: data.error && data.error.path === "json" ? "json" : "builder",
      jsonText: "",
      jsonError: data.error && data.error.path === "json" ? data.error.message : "",
      preview: { state: "empty", size: "", note: "", sample: [], loading: false },
      sequence: 0,
      timer: null,
      controller: null,

      init() {
        // $refs are not registered yet while init runs: read the textarea by its id.
        if (this.tab === "json") this.jsonText = document.getElementById("definition-json").value;
        else this.jsonText = pretty(exportRoot(this.root));
        this.$watch("documentText", () => {
          if (this.tab === "builder") this.jsonText = pretty(exportRoot(this.root));
          this.schedulePreview(400);
        });
        this.schedulePreview(0);
      },
      get rows() {
        return this.flatten(this.root, "audience");
      },
      get documentText() {
        return JSON.stringify(exportRoot(this.root) === undefined ? null : exportRoot(this.root));
      },
      get isBuilder() { return this.tab === "builder"; },
      get isJson() { return this.tab === "json"; },
      get builderTabIndex() { return this.tab === "builder" ? "0" : "-1"; },
      get jsonTabIndex() { return this.tab === "json" ? "0" : "-1"; },
      get jsonInvalid() { return Boolean(this.jsonError || (this.serverError && this.tab === "json")); },
      get jsonMessage() {
        if (this.jsonError) return this.jsonError;
        const error = this.serverError;
        return error && error.path !== "json" ? `At ${error.path}: ${error.message}` : "";
      },
      get generalError() {
        const error = this.serverError;
        if (!error || error.path === "json") return "";
        const rows = this.rows;
        return rows.some((row) => row.error) ? "" : error.message;
      },

      // --- tabs ---
      showBuilder() {
        if (this.tab === "builder") return;
        if (this.jsonError) {
          this.jsonError = "";
        }
        this.tab = "builder";
        this.jsonText = pretty(exportRoot(this.root));
      },
      showJson() {
        this.jsonText = pretty(exportRoot(this.root));
        this.jsonError = "";
        this.tab = "json";
      },
      tabKeys(event) {
        if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
          event.preventDefault();
          if (this.tab === "builder") this.showJson(); else this.showBuilder();
          this.$nextTick(() => this.$root.querySelector(`[role="tab"][aria-selected="true"]`).focus());
        }
      },
      jsonEdited() {
        const text = this.jsonText;
        if (!text.trim()) {
          this.root = importRoot(null, "audience");
          this.jsonError = "";
          return;
        }
        try {
          const doc = JSON.parse(text);
          this.root = importRoot(doc, "audience");
          this.jsonError = "";
        } catch (error) {
          this.jsonError = jsonProblem(text, error);
        }
      },

      // --- the preview ---
      schedulePreview(delay) {
        clearTimeout(this.timer);
        this.timer = setTimeout(() => this.runPreview(), delay);
      },
      async runPreview() {
        const doc = exportRoot(this.root);
        if (doc === undefined) {
          this.serverError = null;
          this.preview = { state: "empty", size: "", note: "", sample: [], loading: false };
          return;
        }
        const sequence = ++this.sequence;
        if (this.controller) this.controller.abort();
        this.controller = new AbortController();
        this.preview.loading = true;
        try {
          const response = await fetch(this.previewUrl, {
            method: "POST",
            signal: this.controller.signal,
            credentials: "same-origin",
            headers: {
              "Content-Type": "application/json",
              Accept: "application/json",
              "X-CSRF-Token": document.querySelector('meta[name="csrf-token"]').content,
            },
            body: JSON.stringify({ definition: doc }),
          });
          if (sequence !== this.sequence) return;
          if (!response.ok) {
            const note = response.status === 401 ? "Your session has ended: sign in again in another tab." : "The preview is not available right now.";
            this.preview = { state: "failed", size: "", note, sample: [], loading: false };
            return;
          }
          this.showPreview(await response.json());
        } catch (error) {
          if (error.name === "AbortError" || sequence !== this.sequence) return;
          this.preview = { state: "failed", size: "", note: "The preview could not reach Tessera.", sample: [], loading: false };
        }
      },
      showPreview(body) {
        if (!body.ok) {
          this.serverError = body.error;
          this.preview = { state: "invalid", size: "", note: "Fix the marked condition to see who matches.", sample: [], loading: false };
          return;
        }
        this.serverError = null;
        const share = body.profiles ? ` · ${(body.size / body.profiles * 100).toLocaleString(undefined, { maximumFractionDigits: 1 })}% of ${body.profiles.toLocaleString()} profiles` : "";
        const margin = !body.exact && body.margin ? ` ± ${body.margin.toLocaleString()}` : "";
        const size = `${body.exact ? "" : "about "}${body.size.toLocaleString()}${margin} ${body.size === 1 && !margin ? "person" : "people"}`;
        this.preview = {
          state: "ok",
          size,
          note: (body.exact ? "Exact, as of now" : "Estimated from a sample of the profiles, 95% sure") + share,
          sample: body.sample.map((person) => ({
            id: person.id,
            href: `/people/${encodeURIComponent(person.id)}`,
            label: person.name || person.email || "Anonymous person",
            detail: person.name && person.email ? person.email : person.id,
          })),
          loading: false,
        };
      },
      get previewEmpty() { return this.preview.state === "empty"; },
      get previewReady() { return this.preview.state === "ok"; },
      get previewNoOne() { return this.preview.state === "ok" && !this.preview.sample.length; },
      get previewMessage() { return this.preview.state === "invalid" || this.preview.state === "failed"; },

      // --- saving ---
      beforeSubmit(event) {
        if (this.tab === "json" && this.jsonError) {
          event.preventDefault();
          this.$refs.json.focus();
          return;
        }
        const text = pretty(exportRoot(this.root));
        this.jsonText = text;
        this.$refs.json.value = text;
      },
    });
  }

  // ---------- the computed-trait form ----------

  function computedTraitForm() {
    const source = document.getElementById("computed-trait-data");
    const data = JSON.parse(source ? source.textContent : "{}");
    const editor = treeEditor(data);
    return extend(editor, {
      kind: data.kind || "count",
      eventName: data.eventName || "",
      eventType: data.eventType || "",
      propertiesUrl: data.propertiesUrl,
      windowUnit: data.windowUnit || "",
      where: importRoot(data.where, "filter"),
      propertyKinds: data.propertyKinds || [],

      get rows() {
        const owner = { name: "Event", number: 0 };
        return this.flatten(this.where, "filter", { ...owner, event: this.eventName });
      },
      get whereText() {
        const doc = exportRoot(this.where);
        return doc === undefined ? "" : JSON.stringify(doc);
      },
      get needsProperty() { return this.propertyKinds.includes(this.kind); },
      get needsLimit() { return this.kind === "unique_list"; },
      get windowed() { return Boolean(this.windowUnit); },
      get noFilters() { return this.where.children.length === 0; },
      get whereId() { return this.where.id; },
      get windowLabel() { return this.windowUnit === "hours" ? "Hours" : "Days"; },
      setKindField(event) { this.kind = event.target.value; },
      setEventType(event) { this.eventType = event.target.value; },
      setWindowField(event) { this.windowUnit = event.target.value; },
      addRootFilter() {
        const node = blank("property");
        this.where.children.push(node);
        this.focusRow(node.id);
      },
    });
  }

  document.addEventListener("alpine:init", () => {
    window.Alpine.data("audienceBuilder", audienceBuilder);
    window.Alpine.data("computedTraitForm", computedTraitForm);
  });
})();
