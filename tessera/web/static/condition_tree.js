// Audience and filter definitions as a tree the builder edits, and back: the JSON document
// the API takes, exactly. Values as inputs hold them (text and a type), nodes for groups and
// conditions, import and export, and JSON mistakes located by line and column. No DOM and
// no Alpine here: static/audiences.js draws the tree.
//
// Any part the builder cannot show as a condition (a typo'd key, a value of a shape no input
// holds) is kept as a JSON node, so loading and saving never changes a definition behind a
// person's back.
"use strict";

(function () {
  const VALUELESS = ["exists", "is_empty"];
  const DATE_OPS = ["before", "after"];
  const NUMERIC_KINDS = ["count", "sum", "avg", "min", "max"];
  const TIME_KINDS = ["first_time", "last_time"];
  let counter = 0;
  const newId = () => `n${++counter}`;
  const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);

  function sameJson(a, b) {
    if (a === b) return true;
    if (Array.isArray(a)) {
      return Array.isArray(b) && a.length === b.length && a.every((item, i) => sameJson(item, b[i]));
    }
    if (isObject(a) && isObject(b)) {
      const keys = Object.keys(a);
      return keys.length === Object.keys(b).length && keys.every((k) => k in b && sameJson(a[k], b[k]));
    }
    return false;
  }

  // ---------- values: what an input holds, and the JSON it stands for ----------

  function valueFields(value, op) {
    if (op === "in" && Array.isArray(value) && value.length) {
      if (value.every((v) => typeof v === "string" && v !== "" && v === v.trim() && !v.includes(","))) {
        return { text: value.join(", "), vtype: "text" };
      }
      if (value.every((v) => typeof v === "number" && Number.isFinite(v))) {
        return { text: value.join(", "), vtype: "number" };
      }
      return { text: JSON.stringify(value), vtype: "json" };
    }
    if (typeof value === "string") return { text: value, vtype: "text" };
    if (typeof value === "number") return { text: String(value), vtype: "number" };
    if (typeof value === "boolean") return { text: String(value), vtype: "bool" };
    return { text: JSON.stringify(value === undefined ? null : value), vtype: "json" };
  }

  function scalar(text, vtype) {
    if (vtype === "number") {
      const trimmed = text.trim();
      const number = Number(trimmed);
      return trimmed !== "" && Number.isFinite(number) ? number : text;
    }
    if (vtype === "bool") return text === "true";
    return text;
  }

  function jsonValue(node) {
    if (node.vtype === "json") {
      try { return JSON.parse(node.text); } catch (error) { return node.text; }
    }
    if (node.op === "in") {
      return node.text.split(",").map((item) => item.trim()).filter((item) => item !== "")
        .map((item) => scalar(item, node.vtype));
    }
    return scalar(node.text, node.vtype);
  }

  function testDocument(node) {
    const doc = { op: node.op };
    if (!VALUELESS.includes(node.op)) doc.value = jsonValue(node);
    return doc;
  }

  function readTest(node, doc) {
    node.op = typeof doc.op === "string" ? doc.op : "";
    Object.assign(node, "value" in doc ? valueFields(doc.value, node.op) : { text: "", vtype: "text" });
  }

  // ---------- nodes ----------

  function group(op, children, bare) {
    return { id: newId(), type: "group", op, not: 0, bare: Boolean(bare), children: children || [] };
  }

  function blank(type) {
    const node = { id: newId(), type, not: 0 };
    if (type === "trait") Object.assign(node, { trait: "", op: "eq", text: "", vtype: "text" });
    if (type === "property") Object.assign(node, { property: "", op: "eq", text: "", vtype: "text" });
    if (type === "computed") Object.assign(node, { computed: "", op: "gte", text: "", vtype: "number" });
    if (type === "audience") node.audience = "";
    if (type === "consent") node.consent = "";
    if (type === "event") {
      Object.assign(node, {
        event: "", measure: "performed", countOp: "gte", countText: "1", op: "within_last_days",
        text: "30", vtype: "number", windowUnit: "", windowText: "30", where: group("and", [], true),
      });
    }
    return node;
  }

  function importNode(doc, scope) {
    let nots = 0;
    let inner = doc;
    while (isObject(inner) && Object.keys(inner).length === 1 && "not" in inner) {
      nots += 1;
      inner = inner.not;
    }
    let node = null;
    try {
      node = readNode(inner, scope);
    } catch (error) {
      node = null;
    }
    if (node === null || !sameJson(exportBare(node), inner)) {
      node = { id: newId(), type: "raw", not: 0, text: JSON.stringify(inner, null, 2), value: inner };
    }
    node.not = nots;
    return node;
  }

  function readNode(doc, scope) {
    if (!isObject(doc)) return null;
    const keys = Object.keys(doc);
    for (const op of ["and", "or"]) {
      if (keys.length === 1 && keys[0] === op && Array.isArray(doc[op]) && doc[op].length) {
        return group(op, doc[op].map((child) => importNode(child, scope)), false);
      }
    }
    const kinds = scope === "filter" ? ["property"] : ["trait", "computed", "event", "audience", "consent"];
    const type = kinds.find((kind) => kind in doc);
    if (!type || typeof doc[type] !== "string") return null;
    const node = blank(type);
    if (type === "trait" || type === "computed" || type === "property") {
      node[type] = doc[type];
      readTest(node, doc);
    } else if (type === "audience" || type === "consent") {
      node[type] = doc[type];
    } else {
      readEvent(node, doc);
    }
    return node;
  }

  function readEvent(node, doc) {
    node.event = doc.event;
    if ("where" in doc) node.where = importRoot(doc.where, "filter");
    if ("performed" in doc) node.measure = doc.performed === false ? "not_performed" : "performed";
    if (isObject(doc.count)) {
      node.measure = "count";
      node.countOp = doc.count.op;
      node.countText = String(doc.count.value);
    }
    for (const measure of TIME_KINDS) {
      if (isObject(doc[measure])) {
        node.measure = measure;
        readTest(node, doc[measure]);
      }
    }
    if (isObject(doc.window)) {
      const [unit] = Object.keys(doc.window);
      node.windowUnit = unit;
      node.windowText = String(doc.window[unit]);
    }
  }

  function importRoot(doc, scope) {
    if (doc === null || doc === undefined) return group("and", [], true);
    const node = importNode(doc, scope);
    if (node.type === "group") return node;
    return group("and", [node], true);
  }

  // ---------- export: the JSON document ----------

  function wrapNot(doc, count) {
    let out = doc;
    for (let i = 0; i < count; i += 1) out = { not: out };
    return out;
  }

  function exportNode(node) {
    return wrapNot(exportBare(node), node.not);
  }

  function exportBare(node) {
    switch (node.type) {
      case "group": return { [node.op]: node.children.map(exportNode) };
      case "trait": return { trait: node.trait, ...testDocument(node) };
      case "computed": return { computed: node.computed, ...testDocument(node) };
      case "property": return { property: node.property, ...testDocument(node) };
      case "audience": return { audience: node.audience };
      case "consent": return { consent: node.consent };
      case "event": return exportEvent(node);
      default: return node.value;
    }
  }

  function exportEvent(node) {
    const doc = { event: node.event };
    const where = exportRoot(node.where);
    if (where !== undefined) doc.where = where;
    if (node.measure === "performed" || node.measure === "not_performed") {
      doc.performed = node.measure === "performed";
    } else if (node.measure === "count") {
      doc.count = { op: node.countOp, value: scalar(node.countText, "number") };
    } else {
      doc[node.measure] = testDocument(node);
    }
    if (node.windowUnit && !TIME_KINDS.includes(node.measure)) {
      doc.window = { [node.windowUnit]: scalar(node.windowText, "number") };
    }
    return doc;
  }

  function exportRoot(root) {
    if (root.bare && root.not === 0 && root.children.length <= 1) {
      return root.children.length ? exportNode(root.children[0]) : undefined;
    }
    return exportNode(root);
  }

  // ---------- JSON text ----------

  function pretty(doc) {
    return doc === undefined ? "" : JSON.stringify(doc, null, 2);
  }

  // Where a text stops being JSON and what was expected there: JSON.parse's messages differ
  // between browsers and often give no position, so the text is walked here.
  function firstJsonMistake(text) {
    let i = 0;
    const fail = (expected) => { throw { index: i, expected }; };
    const space = () => { while (i < text.length && " \t\n\r".includes(text[i])) i += 1; };
    const string = () => {
      i += 1;
      while (i < text.length) {
        if (text[i] === "\\") i += 2;
        else if (text[i] === '"') { i += 1; return; }
        else if (text[i] === "\n") fail("the closing double quote");
        else i += 1;
      }
      fail("the closing double quote");
    };
    const value = () => {
      space();
      const c = text[i];
      if (c === "{" || c === "[") {
        const close = c === "{" ? "}" : "]";
        i += 1;
        space();
        if (text[i] === close) { i += 1; return; }
        for (;;) {
          if (c === "{") {
            space();
            if (text[i] !== '"') fail("a property name in double quotes");
            string();
            space();
            if (text[i] !== ":") fail("a colon after the property name");
            i += 1;
          }
          value();
          space();
          if (text[i] === ",") { i += 1; continue; }
          if (text[i] === close) { i += 1; return; }
          fail(`a comma or ${close}`);
        }
      }
      if (c === '"') { string(); return; }
      const number = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i));
      if (number && number[0]) { i += number[0].length; return; }
      const word = ["true", "false", "null"].find((w) => text.startsWith(w, i));
      if (word) { i += word.length; return; }
      fail(i >= text.length ? "more: the text ends too early" : "a value: text in double quotes, a number, true, false, null, { or [");
    };
    try {
      value();
      space();
      if (i < text.length) fail("nothing more after the end of the document");
      return null;
    } catch (mistake) {
      if (mistake && typeof mistake.index === "number") return mistake;
      throw mistake;
    }
  }

  // A JSON mistake in words, with its line and column.
  function jsonProblem(text, error) {
    const mistake = firstJsonMistake(text);
    const advice = "Fix it, or go back to the builder to discard the edit.";
    if (!mistake) return `This is not valid JSON: ${error.message}. ${advice}`;
    const before = text.slice(0, mistake.index);
    const line = before.split("\n").length;
    const column = before.length - before.lastIndexOf("\n");
    return `This is not valid JSON (line ${line}, column ${column}): expected ${mistake.expected}. ${advice}`;
  }

  window.TesseraConditionTree = {
    VALUELESS, DATE_OPS, NUMERIC_KINDS, TIME_KINDS,
    blank, group, importRoot, exportRoot, pretty, jsonProblem,
  };
  // For tests of the round trip in the browser (tests/e2e): import then export.
  window.tesseraAudienceRoundTrip = (doc) => exportRoot(importRoot(doc, "audience"));
})();
