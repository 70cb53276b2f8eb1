// A running job's page follows the job: every 2 s it asks /jobs/{id}/live for the status, the progress,
// the events after the last one shown and (when metrics came) the loss chart; it stops when the job ends.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !live.dataset.liveUrl) return;
  var url = live.dataset.liveUrl, after = live.dataset.after || "0", failures = 0;
  var status = document.getElementById("job-status"), bar = document.getElementById("job-progress");
  var text = document.getElementById("job-progress-text"), events = document.getElementById("events");
  var chart = document.getElementById("chart");

  function show(body) {
    status.textContent = body.status;
    status.className = "status-" + body.status;
    var p = body.progress;
    if (p.known) {
      bar.max = p.total;
      bar.value = p.step;
      bar.textContent = p.step + " / " + p.total;
      text.textContent = "step " + p.step + " of " + p.total + (p.epoch !== null && p.epoch !== undefined ? ", epoch " + p.epoch : "");
    }
    if (body.events) events.insertAdjacentHTML("beforeend", body.events);  // rendered and escaped by the server
    if (body.chart) chart.innerHTML = body.chart;
    after = String(body.after);
  }

  function poll() {
    fetch(url + "?after=" + encodeURIComponent(after), {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(function (body) {
        failures = 0;
        show(body);
        if (body.active) setTimeout(poll, 2000);
        else window.location.reload();  // finished: the page shows the result, the times and the whole log
      })
      .catch(function () { if (++failures < 10) setTimeout(poll, 4000); });
  }
  setTimeout(poll, 2000);
})();
