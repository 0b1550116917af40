"""The page's own CSS and JavaScript: the trials table's sorting and filtering, and the live page's reload.

Written by hand: a table library (DataTables, Tabulator) would be one more inlined dependency of a few hundred
kilobytes for two features that take forty lines, and plotly has no sortable HTML table.
"""

from __future__ import annotations

STYLE = """
body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px}
td,th{border-bottom:1px solid #ccc;padding:3px 8px;text-align:right}
img{max-width:100%}figure{display:inline-block;width:48%;margin:0.5%}
nav a{margin-right:1em}.note{color:#555;font-style:italic}
#trials th{cursor:pointer;user-select:none;background:#f4f4f4;position:sticky;top:0}
#trials th[aria-sort=ascending]::after{content:" \\25B2"}#trials th[aria-sort=descending]::after{content:" \\25BC"}
#trials td.reason{text-align:left;max-width:420px;overflow-wrap:anywhere}
#trials tr.ERROR td{color:#b00}#trials tr.RUNNING td{color:#06c}
.trials-wrap{max-height:600px;overflow:auto}
.live{background:#eef6ff;border:1px solid #9cf;padding:4px 8px;display:inline-block}
"""

# Sorting: a click on a header sorts by that column, a second click reverses; numbers (the cell's data-v)
# compare as numbers, the rest as text, empty cells last either way. Filtering: every word typed must occur
# in the row's text, and the status menu keeps one status. The state lives in sessionStorage so that the
# live page's reload keeps the reader's sort and filter.
TABLE_JS = """
(function(){
  var table=document.getElementById('trials'); if(!table) return;
  var body=table.tBodies[0], heads=table.tHead.rows[0].cells;
  var text=document.getElementById('trials-filter'), status=document.getElementById('trials-status');
  var count=document.getElementById('trials-count');
  var prefix='raysweep:'+location.pathname+':';  // one state per report, not shared between experiments
  function store(k,v){try{sessionStorage.setItem(prefix+k,v);}catch(e){}}
  function load(k){try{return sessionStorage.getItem(prefix+k);}catch(e){return null;}}
  function key(row,i){var c=row.cells[i]; var v=c.getAttribute('data-v'); return v===null?c.textContent:v;}
  function sort(i,dir){
    var rows=Array.prototype.slice.call(body.rows);
    var numeric=rows.every(function(r){var k=key(r,i); return k==='' || !isNaN(Number(k));});
    rows.sort(function(a,b){
      var x=key(a,i), y=key(b,i);
      if(x==='' || y===''){return (x==='')-(y==='');}
      var d=numeric?Number(x)-Number(y):x.localeCompare(y,undefined,{numeric:true});
      return dir==='descending'?-d:d;});
    rows.forEach(function(r){body.appendChild(r);});
    for(var j=0;j<heads.length;j++){heads[j].removeAttribute('aria-sort');}
    heads[i].setAttribute('aria-sort',dir); store('sort',i+':'+dir);
  }
  function filter(){
    var words=text.value.toLowerCase().split(/\\s+/).filter(Boolean), want=status.value, shown=0;
    Array.prototype.forEach.call(body.rows,function(r){
      var t=r.textContent.toLowerCase();
      var ok=words.every(function(w){return t.indexOf(w)>=0;}) && (!want || r.getAttribute('data-status')===want);
      r.style.display=ok?'':'none'; if(ok){shown++;}});
    count.textContent=shown+' of '+body.rows.length+' trial(s) shown';
    store('filter',text.value); store('status',want);
  }
  Array.prototype.forEach.call(heads,function(h,i){h.addEventListener('click',function(){
    sort(i,h.getAttribute('aria-sort')==='ascending'?'descending':'ascending');});});
  text.addEventListener('input',filter); status.addEventListener('change',filter);
  var saved=load('sort'); if(saved){var p=saved.split(':'); if(heads[+p[0]]){sort(+p[0],p[1]);}}
  if(load('filter')!==null){text.value=load('filter');}
  var s=load('status'); if(s && Array.prototype.some.call(status.options,function(o){return o.value===s;})){status.value=s;}
  filter();
})();
"""

# The live page reloads itself (the file is rewritten while the sweep runs, or served by `report --watch`);
# a checkbox pauses it while the reader studies a plot.
REFRESH_JS = """
(function(){
  var box=document.getElementById('live-pause'), seconds=%d;
  try{box.checked=sessionStorage.getItem('raysweep-paused')==='1';}catch(e){}
  box.addEventListener('change',function(){try{sessionStorage.setItem('raysweep-paused',box.checked?'1':'0');}catch(e){}});
  setInterval(function(){if(!box.checked){location.reload();}},seconds*1000);
})();
"""
