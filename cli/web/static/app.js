// phonevault web view: small progressive enhancements; every page works without it.
"use strict";

// Timeline: the diff button is enabled when exactly two versions are ticked.
function setupDiff() {
  const form = document.getElementById("diff-form");
  if (!form) return;
  const button = document.getElementById("diff-button");
  const boxes = Array.from(form.querySelectorAll("input[name=s]"));
  const update = () => {
    const n = boxes.filter((b) => b.checked).length;
    button.disabled = n !== 2;
  };
  boxes.forEach((b) => b.addEventListener("change", update));
  update();
}

// Camera roll: the next page is appended as the "more" link scrolls into view.
function setupScroll() {
  const roll = document.getElementById("roll");
  if (!roll || !("IntersectionObserver" in window)) return;
  let loading = false;
  const observer = new IntersectionObserver(async (entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting || loading) continue;
      const more = entry.target;
      loading = true;
      observer.unobserve(more);
      try {
        const response = await fetch(more.dataset.fragment, { credentials: "same-origin" });
        if (!response.ok) return;
        const holder = document.createElement("div");
        holder.innerHTML = await response.text();
        more.remove();
        while (holder.firstChild) roll.appendChild(holder.firstChild);
        const next = document.getElementById("more");
        if (next) observer.observe(next);
      } finally {
        loading = false;
      }
    }
  }, { rootMargin: "600px" });
  const first = document.getElementById("more");
  if (first) observer.observe(first);
}

document.addEventListener("DOMContentLoaded", () => {
  setupDiff();
  setupScroll();
});
