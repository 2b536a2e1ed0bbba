// The live wall (/live): each camera's figure follows the server's events (/live/events). Text is set as
// text, never as markup.
"use strict";
(function () {
  const wall = document.getElementById("wall");
  if (!wall || !window.EventSource) return;
  const camera = wall.dataset.camera;
  const state = document.getElementById("live-state");
  const events = new EventSource("/live/events" + (camera ? "?camera=" + encodeURIComponent(camera) : ""));

  function figureOf(cam) {
    let figure = document.getElementById("camera-" + cam.source_id);
    if (figure) return figure;
    figure = document.createElement("figure");
    figure.id = "camera-" + cam.source_id;
    figure.dataset.source = cam.source_id;
    const link = document.createElement("a");
    link.href = "/live?camera=" + encodeURIComponent(cam.source_id);
    const img = document.createElement("img");
    img.alt = cam.source_id + ", latest frame";
    link.appendChild(img);
    const caption = document.createElement("figcaption");
    const name = document.createElement("strong");
    name.textContent = cam.source_id;
    const when = document.createElement("span");
    when.className = "when";
    const summary = document.createElement("span");
    summary.className = "summary";
    caption.append(name, " · ", when, " UTC · ", summary);
    figure.append(link, caption);
    const after = Array.from(wall.children).find((f) => f.dataset.source > cam.source_id);
    wall.insertBefore(figure, after || null);
    const none = document.getElementById("no-cameras");
    if (none) none.remove();
    return figure;
  }

  events.onmessage = function (event) {
    for (const cam of JSON.parse(event.data)) {
      const figure = figureOf(cam);
      figure.dataset.frame = cam.frame_id;
      figure.querySelector("img").src = "/live/" + encodeURIComponent(cam.source_id) + ".jpg?frame=" +
        encodeURIComponent(cam.frame_id) + "&labelled=" + (cam.labelled ? 1 : 0);
      figure.querySelector(".when").textContent = cam.time;
      figure.querySelector(".summary").textContent = cam.summary;
    }
    if (state) state.textContent = "Updated as frames land.";
  };
  events.addEventListener("gone", function (event) {
    for (const source of JSON.parse(event.data)) {
      const figure = document.getElementById("camera-" + source);
      if (figure) figure.remove();
    }
  });
  events.onerror = function () {
    if (events.readyState === EventSource.CLOSED) {
      // Refused (the wall busy, a login, a proxy between): the page is loaded again in a while.
      if (state) state.textContent = "Not updating (the viewer refused the updates); reloading in 10 s.";
      setTimeout(function () { location.reload(); }, 10000);
    } else if (state) {
      state.textContent = "The viewer is not answering; trying again.";
    }
  };
})();
